"""``liber encode``'s progress on stderr: partitions done of total, LLM calls per second, ETA.

A long encode was silent for minutes. In a terminal this is a tqdm bar; anywhere else (a log
file, CI, a pipe) a bar's carriage returns make one unreadable line, so it is one line per
settled batch instead::

    encode: 4/9 partitions, 8 LLM calls, 0.40 calls/s, eta 0:00:12

The encode loop calls it (``uil.interest.OnProgress``) once when the work is known and after
every batch; ``--json`` runs without it. Rates count this run's calls only (a rerun's earlier
calls are not in them); the ETA is the time so far per partition times the partitions left.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import TextIO

__all__ = ["EncodeProgress", "progress_line"]

_clock = time.monotonic  # module-level so that a test can give it a fixed pace


def progress_line(done: int, total: int, calls: int, elapsed_s: float) -> str:
    """The non-terminal line for ``done`` of ``total`` partitions, ``calls`` LLM calls, so far."""
    rate = calls / elapsed_s if elapsed_s > 0 else 0.0
    eta = str(timedelta(seconds=round(elapsed_s / done * (total - done)))) if done else "-"
    return f"encode: {done}/{total} partitions, {calls} LLM calls, {rate:.2f} calls/s, eta {eta}"


class EncodeProgress:
    """The ``on_progress`` callback of ``liber encode``: a bar in a terminal, else a line per batch."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.bar = None
        self.started: float | None = None
        self.first_calls = 0

    def __call__(self, done: int, total: int, calls: int) -> None:
        now = _clock()
        if self.started is None:
            self.started, self.first_calls = now, calls
        elapsed, run_calls = now - self.started, calls - self.first_calls
        if not self.tty:
            print(progress_line(done, total, run_calls, elapsed), file=self.stream, flush=True)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="part", desc="encode", file=self.stream)
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix_str(f"{run_calls / elapsed if elapsed > 0 else 0.0:.2f} calls/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
