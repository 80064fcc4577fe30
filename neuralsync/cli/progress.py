"""Progress of long work (import, export, doctor, embedding), drawn by tqdm on stderr.

Progress belongs on stderr so stdout stays a clean data stream, and only on a
terminal: tqdm is told to stay silent when the stream is not a TTY, so pipes,
files and CI logs get no carriage-return noise. The work reports absolute
counts (``bar(done)`` or ``bar(done, total)`` when the total is learnt late).
"""

from __future__ import annotations

import sys
from typing import IO, Any


class Progress:
    """A progress bar; a callable taking ``(done, total=None)``. tqdm is imported only when one is made."""

    def __init__(self, label: str, total: int | None = None, unit: str = "", stream: IO[str] | None = None,
                 enabled: bool | None = None, min_interval: float = 0.1) -> None:
        from tqdm import tqdm

        out = stream if stream is not None else sys.stderr
        on = _is_tty(out) if enabled is None else enabled
        self._bar: Any = tqdm(total=total, desc=label, unit=unit or "it", unit_scale=unit == "B",
                              unit_divisor=1024 if unit == "B" else 1000, file=out, disable=not on,
                              leave=True, dynamic_ncols=True, mininterval=min_interval)

    def __call__(self, done: int, total: int | None = None) -> None:
        """Report progress: ``done`` so far, out of ``total`` if now known."""
        if total is not None and total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Draw the final state and end the line (nothing when silent)."""
        self._bar.close()


def _is_tty(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
