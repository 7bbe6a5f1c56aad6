"""A real small filesystem for storage-fault tests: a tmpfs of a few hundred KiB that a filler file can fill.

Mounting needs root (CI runs as root). Where `mount -t tmpfs` is refused, the tests are skipped with that
reason rather than faked: a full disk is only believable on a real file system.
"""

import errno
import subprocess
from pathlib import Path

import pytest


class SmallDisk:
    """A tmpfs of `size_kib` at `path`; `fill()` takes every free byte, `free()` gives them back."""

    def __init__(self, path: Path, size_kib: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs to fill ({done.stderr.strip() or done.returncode}); needs root")
        self.filler = path / "filler"

    def fill(self) -> None:
        """Write zeros until the file system says ENOSPC."""
        with open(self.filler, "ab", buffering=0) as out:
            chunk = b"\0" * 4096
            try:
                while True:
                    out.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            try:
                while True:
                    out.write(b"\0")
            except OSError:
                pass

    def free(self) -> None:
        """Delete the filler."""
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)

