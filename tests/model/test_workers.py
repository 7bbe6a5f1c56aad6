"""`kill` of an `isic-model` command stops its worker processes and theirs (real spawned processes).

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
