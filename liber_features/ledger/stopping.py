"""SIGTERM that ends a job between ledger writes, never inside one.

`liber encode` turns SIGTERM into ``SystemExit(143)`` so that a plain ``kill`` ends the run as
failed and gives its claims back. Raised at an arbitrary bytecode, that exit can land inside a
``@contextmanager``'s ``__enter__`` after its generator took the worker's write lock and opened a
transaction but before the ``with`` block owns them: the lock is then never released, and the
clean-up that gives the claims back waits for it forever (a CI run hung exactly so). Code that
must not be cut in half runs inside :func:`critical`; a stop that arrives there is held until
the section ends and raised right after it.

Only the main thread counts (Python runs signal handlers there); other threads' sections end
on their own, and the main thread's clean-up waits for them through the locks they hold.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

EXIT_SIGTERM = 143  # 128 + SIGTERM, as a shell reports a process ended by `kill`


class _State:
    depth = 0  # main-thread critical sections open now
    pending: int | None = None  # exit code of a stop that arrived inside one


def _in_main() -> bool:
    return threading.current_thread() is threading.main_thread()


class critical:  # noqa: N801 - used as `with critical():`, like contextlib's helpers
    """A section a stop signal waits for: ``with critical(): ...``. Sections nest.

    A class rather than a generator on purpose: entering is one integer increment, so there is
    no window in which the section is open but its exit is not yet registered.
    """

    def __enter__(self) -> None:
        if _in_main():
            _State.depth += 1

    def __exit__(self, *exc: object) -> None:
        if not _in_main():
            return
        _State.depth -= 1
        if _State.depth == 0 and _State.pending is not None:
            code, _State.pending = _State.pending, None
            raise SystemExit(code)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if _State.depth > 0:
        _State.pending = EXIT_SIGTERM
        return
    raise SystemExit(EXIT_SIGTERM)


def exit_on_sigterm() -> None:
    """Make SIGTERM end this process with exit code 143, outside :func:`critical` sections."""
    signal.signal(signal.SIGTERM, _on_sigterm)
