"""One way to write a derived file: whole or not at all, and never over another writer's rows.

Feast, the trainer and the scorer read files other processes write (the long-term memory table,
the short-term cache history, the item text vectors). A reader must never see a half-written file
and a crash must never leave one, so :func:`atomic_write` writes into a temp file of this writer's
own in the target's directory (same file system, so the rename is atomic; a per-writer name, so two
writers never write into or rename away each other's), flushes and fsyncs it, ``os.replace``-s it
over the target, and fsyncs the directory so the rename itself survives a power cut.

An atomic rename is not enough for a file that is *rewritten from its own content* (append =
read + concat + write): two appenders read the same old file and the second rename drops the
first one's rows. Such writers hold :func:`locked` — an exclusive ``flock`` on a lock file next to
the target — across the whole read-modify-write. The lock file is never deleted: unlinking it
while another process waits on it would let a third lock a new file beside them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "lock_path", "locked"]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it replaces ``path`` whole, on an error nothing changes.

    ``with atomic_write(p) as f: pq.write_table(table, f)`` (or ``np.save(f, a)``, ``f.write(b)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # still there only when the write failed
    _fsync_dir(path.parent)


def lock_path(path: str | Path) -> Path:
    """The lock file that guards ``path``'s read-modify-write rewrites."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (through :func:`lock_path`) for the block; blocks until free."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
