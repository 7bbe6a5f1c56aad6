"""`kill` of an `isic-model` command stops its worker processes and theirs (real spawned processes); two
commands writing one cache file at once both finish.

The command's process starts a spawned pool (as `train` starts its counter stage), whose worker starts
a pool of its own (as the counter stage renders its tiles); every process writes its pid and sleeps.
SIGTERM to the command alone must leave none of them running.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Imported by the spawned workers from the module file written below (a test module is not importable
# by name from another process).
WORKERS = '''
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from isic_model.workers import stop_workers_on_sigterm

def sleeper(pids):
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(120)

def stage(pids):
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=stop_workers_on_sigterm) as pool:
        list(pool.map(sleeper, [pids, pids]))

def command(pids):
    stop_workers_on_sigterm()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                             initializer=stop_workers_on_sigterm) as pool:
        pool.submit(stage, pids).result()

if __name__ == "__main__":
    command(sys.argv[1])
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"   # a zombie has stopped (not reaped yet)
    except FileNotFoundError:
        return False


def test_sigterm_to_the_command_stops_its_workers_and_theirs(tmp_path: Path) -> None:
    module = tmp_path / "worker_tree.py"
    module.write_text(WORKERS)
    pids = tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, str(module), str(pids)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not pids.exists() or len(pids.read_text().split()) < 3):
            time.sleep(0.1)
        workers = [int(p) for p in pids.read_text().split()]
        assert len(workers) == 3 and all(_alive(p) for p in workers)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.1)
        assert [p for p in workers if _alive(p)] == []
    finally:
        proc.kill()
        for p in [int(p) for p in pids.read_text().split()] if pids.exists() else []:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


WRITER = '''
import sys
from pathlib import Path
import numpy as np
from isic_model.workers import save_npz

value = int(sys.argv[2])
for _ in range(200):
    save_npz(Path(sys.argv[1]), {"x": np.full(20000, value)})
'''


def test_two_commands_writing_the_same_cache_file_both_finish_and_leave_it_whole(tmp_path: Path) -> None:
    """Two trainings sharing a cache folder write the same lab set at once (seen: the second one died)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    target = tmp_path / "cache" / "lab-key.npz"
    writers = [subprocess.Popen([sys.executable, str(script), str(target), str(v)], stderr=subprocess.PIPE)
               for v in (1, 2)]
    for proc in writers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    with np.load(target) as data:
        assert len(set(data["x"].tolist())) == 1 and int(data["x"][0]) in (1, 2)
    assert sorted(p.name for p in target.parent.iterdir()) == ["lab-key.npz"]
