"""``torchrun`` for ``tools/dist_train.sh`` / ``tools/dist_test.sh``: torch's own launcher, with a failed job
reported in one line.

When a worker fails, torch's elastic agent raises ``ChildFailedError`` out of ``torch.distributed.run.main``, which
prints the agent's own traceback and a failure table after the workers' messages. Users fixing a bad config or a
refused checkpoint need the workers' ``error:`` line, not the agent's stack: this entry point runs the same
``main`` and turns that exception into one line naming the failed rank, its exit code (or signal) and how many
workers failed, then exits with the worker's status (2 for a user error, 128 + N for signal N).
"""
from __future__ import annotations

import signal
import sys
from typing import Optional, Sequence

__all__ = ['main']


def _describe(exitcode: int) -> str:
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f'signal {-exitcode}'
        return f'was killed by Signal {-exitcode} ({name})'
    return f'exited with status {exitcode}'


def main(argv: Optional[Sequence[str]] = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main
    try:
        torchrun_main(list(argv) if argv is not None else None)
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
