"""Worker processes that stop with the command that started them.

`isic-model` runs its long stages in spawned worker processes (lab sets, the counter stage,
calibration records), and some of those start workers of their own. A `kill` (SIGTERM) reaches only
the command's process, and Python's default is to die at once: its workers, orphaned, would run
their stage to the end (a counter stage: a quarter of an hour on both cores) on a machine someone
wanted back. Ctrl-C needs none of this: the terminal sends SIGINT to the whole process group.
"""

import multiprocessing
import os
import signal
from typing import Any


def stop_workers_on_sigterm() -> None:
    """On SIGTERM, terminate this process's worker processes (each does the same with its own), then
    exit with 143 as the default action would: the pools' initializer, and the command's main."""
    signal.signal(signal.SIGTERM, _terminate_workers)


def _terminate_workers(signum: int, _frame: Any) -> None:
    for child in multiprocessing.active_children():
        child.terminate()
    # Not sys.exit: inside a pool worker SystemExit would be caught as the task's failure and the
    # worker would wait for more work. The default action skips all clean-up too.
    os._exit(128 + signum)
