"""A pseudo-terminal an emulated serial device answers on, with an optional stable path to it.

A pty's slave path (/dev/pts/N) cannot be reused once the pty is closed, so an emulator that
"unplugs" its line and comes back gets a new path. Like udev's stable names for USB serial adapters,
an optional symlink (`link`) is re-pointed atomically to each new pty, so the station keeps one port
name across reconnects.
"""

import logging
import os
import tty
from typing import Optional

log = logging.getLogger(__name__)


class PseudoTerminal:
    """The device side (master) of a raw-mode pty; `path` is what a client opens."""

    def __init__(self, link: Optional[str] = None) -> None:
        self.link = link
        self.master_fd = -1
        self._slave_fd = -1
        self.slave_path = ""
        self.open()

    @property
    def path(self) -> str:
        """The port name a client opens: the stable link when there is one, else the slave path."""
        return self.link or self.slave_path

    def open(self) -> None:
        """Open a new pty in raw mode (no echo, no line editing) and point the link at it."""
        self.master_fd, self._slave_fd = os.openpty()
        tty.setraw(self._slave_fd)
        # The slave end stays open here too: with no slave open, reading the master fails with EIO.
        self.slave_path = os.ttyname(self._slave_fd)
        if self.link:
            temporary = f"{self.link}.{os.getpid()}.tmp"
            os.symlink(self.slave_path, temporary)
            os.replace(temporary, self.link)
        log.info("pseudo-terminal %s open%s", self.slave_path, f" (linked as {self.link})" if self.link else "")

    def close(self) -> None:
        """Close both ends: a client's reads and writes on the old slave now fail (a cable pulled)."""
        for fd in (self.master_fd, self._slave_fd):
            if fd >= 0:
                os.close(fd)
        self.master_fd = self._slave_fd = -1

    def reopen(self) -> None:
        """Close the line and open a new one (the link, if any, follows)."""
        self.close()
        self.open()

    def remove(self) -> None:
        """Close for good and remove the link."""
        self.close()
        if self.link and os.path.islink(self.link):
            os.unlink(self.link)
