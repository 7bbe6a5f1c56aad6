"""Worker processes that stop with the command that started them.

`isic-model` runs its long stages in spawned worker processes (lab sets, the counter stage,
calibration records), and some of those start workers of their own. A `kill` (SIGTERM) reaches only
the command's process, and Python's default is to die at once: its workers, orphaned, would run
their stage to the end (a counter stage: a quarter of an hour on both cores) on a machine someone
wanted back. Ctrl-C needs none of this: the terminal sends SIGINT to the whole process group.
The same SIGTERM removes the scratch files a command keeps beside its inputs (`scratch_file`): the
default action skips every `finally`, and a killed `calibrate-uncertainty` left its uncalibrated copy
of the manifest in the shipped model's folder.
"""

import multiprocessing
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Set

import numpy as np

_SCRATCH: Set[Path] = set()  # scratch files of this process, removed on SIGTERM


def stop_workers_on_sigterm() -> None:
    """On SIGTERM, terminate this process's worker processes (each does the same with its own), then
    exit with 143 as the default action would: the pools' initializer, and the command's main."""
    signal.signal(signal.SIGTERM, _terminate_workers)


@contextmanager
def scratch_file(path: Path) -> Iterator[Path]:
    """`path`, a file written beside a command's inputs, removed when the block ends or the command is
    killed (SIGTERM, with `stop_workers_on_sigterm` installed)."""
    _SCRATCH.add(path)
    try:
        yield path
    finally:
        _SCRATCH.discard(path)
        path.unlink(missing_ok=True)


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write a cache file whole or not at all: into a scratch name of this process, then renamed over
    `path`. Two trainings sharing a cache folder write the same key at once; with one shared
    temporary name the second rename found nothing and killed its training (FileNotFoundError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with scratch_file(path.with_name(f".{path.stem}-{os.getpid()}.tmp.npz")) as tmp:
        np.savez(tmp, **arrays)
        tmp.replace(path)


def _terminate_workers(signum: int, _frame: Any) -> None:
    for child in multiprocessing.active_children():
        child.terminate()
    for path in list(_SCRATCH):
        path.unlink(missing_ok=True)
    # Not sys.exit: inside a pool worker SystemExit would be caught as the task's failure and the
    # worker would wait for more work. The default action skips all clean-up too.
    os._exit(128 + signum)
