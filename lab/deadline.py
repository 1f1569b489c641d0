"""Monotonic deadlines and named waits: the only way cnlab waits for anything."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Deadline"]


@dataclass
class Deadline:
    """A point in monotonic time by which ``what`` must have happened."""

    seconds: float
    what: str = "operation"
    start: float = field(default_factory=time.monotonic)

    @property
    def expires(self) -> float:
        return self.start + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.expires - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.expires

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check(self, exc_type: type[Exception] = TimeoutError) -> None:
        """Raise ``exc_type`` naming what timed out, if the deadline passed."""
        if self.expired():
            raise exc_type(f"timed out after {self.seconds:.1f} s waiting for {self.what}")
