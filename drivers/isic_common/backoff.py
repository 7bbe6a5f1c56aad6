"""Exponential retry delays shared by every link that comes and goes: serial port, camera, broker.

The first retry waits `initial_s`, each further failure doubles the wait up to `maximum_s`, and a
success starts again from `initial_s`: quick recovery from a blip, no busy loop while a device stays away.
"""


class Backoff:
    """The delay before the next attempt; `next_delay()` after a failure, `reset()` after a success."""

    def __init__(self, initial_s: float, maximum_s: float) -> None:
        if initial_s <= 0 or maximum_s < initial_s:
            raise ValueError(f"backoff needs 0 < initial ({initial_s}) <= maximum ({maximum_s})")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self.failures = 0
        self._current = initial_s

    def next_delay(self) -> float:
        """The wait before the next attempt; the one after will be twice as long (capped)."""
        delay = self._current
        self.failures += 1
        self._current = min(self._current * 2.0, self.maximum_s)
        return delay

    def reset(self) -> None:
        """The link is up again: the next failure waits `initial_s` once more."""
        self.failures = 0
        self._current = self.initial_s
