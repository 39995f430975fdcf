"""``torchrun`` for ``tools/dist_train.sh`` / ``tools/dist_test.sh``: torch's own launcher, with a failed job
reported in one line.

When a worker fails, torch's elastic agent raises ``ChildFailedError`` out of ``torch.distributed.run.main``, which
prints the agent's own traceback and a failure table after the workers' messages. Users fixing a bad config or a
refused checkpoint need the workers' ``error:`` line, not the agent's stack: this entry point runs the same
``main`` and turns that exception into one line naming the failed rank, its exit code (or signal) and how many
workers failed, then exits with the worker's status (2 for a user error, 128 + N for signal N).

Two failures of the agent itself are one line too: a ``--master_port`` (``PORT``) that another process holds
(``DistNetworkError ... EADDRINUSE``: the line names the port and a free one to use, exit status 2), and a signal
to the launcher (``SignalException``: the agent has stopped the workers; the line says so and, for training, to
resume with ``--resume``; exit status 128 + N, 143 for SIGTERM).
"""
from __future__ import annotations

import re
import signal
import socket
import sys
from typing import List, Optional, Sequence

__all__ = ['main']


def _describe(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f'signal {-exitcode}'
        return f'was killed by Signal {-exitcode} ({name})'
    return f'exited with status {exitcode}'


def _master_port(args: List[str]) -> Optional[str]:
    """``--master_port`` among torchrun's own arguments (those before the script)."""
    for i, arg in enumerate(args):
        if arg.endswith('.py'):
            break
        for name in ('--master_port', '--master-port'):
            if arg.startswith(name + '='):
                return arg.split('=', 1)[1]
            if arg == name and i + 1 < len(args):
                return args[i + 1]
    return None


def _free_port() -> Optional[int]:
    try:
        with socket.socket() as s:
            s.bind(('', 0))
            return s.getsockname()[1]
    except OSError:
        return None


def _port_in_use(err: BaseException, args: List[str]) -> Optional[str]:
    """The one-line message for a rendezvous port another process holds, or None for any other error."""
    text = str(err)
    if 'EADDRINUSE' not in text and 'address already in use' not in text.lower():
        return None
    found = re.search(r'port: (\d+)', text)
    port = found.group(1) if found else (_master_port(args) or '29500')
    free = _free_port()
    script = 'tools/dist_test.sh' if any(a.endswith('test.py') for a in args) else 'tools/dist_train.sh'
    return (f'error: torchrun: port {port} (PORT / --master_port) is already in use on this machine, by another job '
            f'or an earlier run that has not exited: no worker was started. Fix: pick a free port, e.g. '
            f'PORT={free or 29501} bash {script} ..., or stop the process that holds it (ss -ltnp '
            f'\'sport = :{port}\' shows it)')


def _stopped(signum: int, args: List[str]) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f'signal {signum}'
    training = any(a.endswith('train.py') for a in args)
    return (f'error: stopped by {name}: the launcher stopped its workers'
            + ('; resume with --resume (the same command plus --resume continues from the last checkpoint)'
               if training else ''))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.distributed import DistNetworkError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        torchrun_main(list(argv) if argv is not None else None)
    except SignalException as err:
        print(_stopped(int(err.sigval), args), file=sys.stderr, flush=True)
        return 128 + int(err.sigval)
    except DistNetworkError as err:
        message = _port_in_use(err, args)
        if message is None:
            raise
        print(message, file=sys.stderr, flush=True)
        return 2
    except ChildFailedError as err:
        rank, first = err.get_first_failure()
        total = len(err.failures)
        print(f'error: torchrun: worker rank {rank} (local rank {first.local_rank}, pid {first.pid}) '
              f'{_describe(first.exitcode)}; {total} worker{"s" if total > 1 else ""} failed. The workers\' own '
              f'messages are above', file=sys.stderr, flush=True)
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode
    return 0


if __name__ == '__main__':
    sys.exit(main())
