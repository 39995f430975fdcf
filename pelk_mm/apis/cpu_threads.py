"""How many threads a CPU run of the launchers uses.

torch starts one OpenMP thread per physical core. On a machine where other processes already use some of the cores,
the threads of one matmul wait for each other at every barrier while the others run, and a run gets several times
slower than with fewer threads (the detection demo on a busy 2-core machine: over 15 min with the default, 3.7 min
with one thread). So for CPU runs the launchers choose the thread count themselves: the cores this process may use,
minus those busy with other work (sampled for half a second before the run), split over the processes of the job on
this machine, and at least one.

``OMP_NUM_THREADS`` set by the user, or ``PELK_MM_CPU_THREADS=N``, is used as given. CUDA runs are left alone.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Tuple

__all__ = ['THREADS_ENV', 'usable_cores', 'busy_cores', 'choose_cpu_threads', 'apply_cpu_threads']

#: explicit thread count for CPU runs (wins over the automatic choice)
THREADS_ENV = 'PELK_MM_CPU_THREADS'
#: set by tools/dist_*.sh when the user had set OMP_NUM_THREADS (torchrun sets it to 1 otherwise)
USER_OMP_ENV = 'PELK_MM_USER_OMP_NUM_THREADS'


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; cgroup quotas are not read)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cores(sample_s: float = 0.5) -> float:
    """Cores kept busy by every process of the machine over ``sample_s`` seconds (this one idles meanwhile)."""
    import psutil
    return sum(psutil.cpu_percent(interval=sample_s, percpu=True)) / 100.0


def choose_cpu_threads(environ: Mapping[str, str], cores: int, busy: float) -> Tuple[Optional[int], str]:
    """``(threads, why)``: the thread count for this process, or ``None`` to leave torch's own choice.

    ``environ`` decides whether the user chose (``PELK_MM_CPU_THREADS``, or ``OMP_NUM_THREADS`` when they set it
    themselves) and how many processes of the job share this machine (``LOCAL_WORLD_SIZE`` from torchrun)."""
    explicit = environ.get(THREADS_ENV, '').strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            from pelk_mm.errors import LaunchError
            raise LaunchError(f'{THREADS_ENV}={explicit!r} is not a thread count. Fix: set it to a whole number >= 1, '
                              f'or unset it to let the launcher choose from the idle cores')
        return int(explicit), f'{THREADS_ENV}={explicit}'
    procs = max(1, int(environ.get('LOCAL_WORLD_SIZE', '1') or 1))
    user_omp = environ.get(USER_OMP_ENV, '') if 'LOCAL_WORLD_SIZE' in environ else environ.get('OMP_NUM_THREADS', '')
    if user_omp.strip():
        return None, f'OMP_NUM_THREADS={user_omp.strip()} (yours)'
    # NOTE: the sampled busy cores include nothing of this job yet (its processes import and wait meanwhile); the
    # processes of the job on this machine share what is idle.
    idle = max(1.0, cores - busy)
    threads = max(1, int(idle + 0.25) // procs)
    return threads, (f'{cores} usable core(s), {busy:.1f} busy with other work, {procs} process(es) of this job here; '
                     f'set {THREADS_ENV}=N or OMP_NUM_THREADS=N to choose')


def apply_cpu_threads(environ: Optional[Mapping[str, str]] = None, cuda: Optional[bool] = None,
                      sample_s: float = 0.5) -> Optional[str]:
    """For a CPU run, set torch's thread count as :func:`choose_cpu_threads` says. Returns a note for the log."""
    import torch
    environ = os.environ if environ is None else environ
    if cuda if cuda is not None else torch.cuda.is_available():
        return None
    has_choice = environ.get(THREADS_ENV, '').strip() or (
        environ.get(USER_OMP_ENV if 'LOCAL_WORLD_SIZE' in environ else 'OMP_NUM_THREADS', '').strip())
    threads, why = choose_cpu_threads(environ, usable_cores(), 0.0 if has_choice else busy_cores(sample_s))
    if threads is None:
        return None
    torch.set_num_threads(threads)
    return f'CPU run: {threads} torch thread(s) ({why})'
