"""A periodic progress line (done/total, rate, ETA) that reads well both in a terminal and in CI logs."""

from __future__ import annotations

import sys
import time


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(
        self, label: str, total: int, unit: str = "samples", every: float = 5.0, stream=None, quiet_start: bool = False
    ):
        """`quiet_start`: print nothing until one period has passed (a short fan-out stays silent)."""
        self.label, self.total, self.unit, self.every = label, total, unit, every
        self.done = 0
        self.extra = ""
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self._last = self.start if quiet_start else 0.0
        self._printed = -1
        self._quiet = quiet_start

    def update(self, n: int, extra: str = "", force: bool = False) -> None:
        self.done += n
        self.extra = extra or self.extra
        now = time.monotonic()
        if (force and self._printed != self.done) or now - self._last >= self.every:
            self._last, self._printed = now, self.done
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_s = _fmt_duration(eta) if eta != float("inf") else "?"
        extra = f", {self.extra}" if self.extra else ""
        speed = f"{rate:.0f} {self.unit}/s" if rate >= 1 else f"{rate * 60:.1f} {self.unit}/min"  # slow items: runs
        return (
            f"[{self.label}] {self.done}/{self.total} {self.unit} ({pct:.1f}%), "
            f"{speed}, elapsed {_fmt_duration(elapsed)}, ETA {eta_s}{extra}"
        )

    def close(self) -> None:
        if not (self._quiet and self._printed < 0):
            self.update(0, force=True)
