"""``liber encode --follow``: the options, the signal handling and the online sync of the follow worker.

The worker itself is ``uil/follow.py``; here it gets the real backends, its online writes (each
committed batch's users: ``features.sync.write_users_online``; the table and the sync state:
``features.sync.sync_long_term``), and a stop flag that SIGINT/SIGTERM set. The first signal lets the batch in flight
commit (its LLM calls are paid for) and then ends the run cleanly; a second one stops at once, as
``liber encode`` without ``--follow`` does (ledger/stopping.py).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import click

__all__ = ["StopOnSignal", "follow_options", "run_follow"]

_OPTIONS = [
    click.option("--follow", is_flag=True,
                 help="keep running: encode partitions as they are sealed and, unless --no-table, write each "
                      "committed batch's users online (the long-term view) at once, no `liber materialize`; "
                      "Ctrl-C / SIGTERM stop after the batch in flight"),
    click.option("--until-idle", is_flag=True, help="with --follow: exit once nothing new is left to encode"),
    click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
                 help="with --follow: stop (after the batch in flight) this many seconds after the start"),
    click.option("--poll", "poll_s", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
                 help="with --follow: seconds between two looks for newly sealed partitions"),
]


def follow_options(f: Callable) -> Callable:
    for opt in reversed(_OPTIONS):
        f = opt(f)
    return f


class StopOnSignal:
    """``with StopOnSignal(say) as stop:`` — ``stop()`` turns true on the first SIGINT/SIGTERM; the
    handlers that were there before come back on that signal (a second one acts as it always did)
    and when the block ends."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say, self.event = say, threading.Event()
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> Callable[[], bool]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.saved[sig] = signal.signal(sig, self._on_signal)
        return self.event.is_set

    def _restore(self) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.event.set()
        self._restore()
        self.say(f"{signal.Signals(signum).name}: stopping after the batch in flight (again: stop now)")

    def __exit__(self, *exc: object) -> None:
        self._restore()


def run_follow(ledger: Any, cfg: Any, spec: tuple, *, repo: str, table: bool, poll_s: float, until_idle: bool,
               max_seconds: float | None, quiet: bool) -> dict[str, Any]:
    """Run the follow worker with the backends ``spec`` names; its summary (encode and follow counters)."""
    from encoders.uil.backends import model_backends
    from liber_features.uil.follow import FollowConfig, follow_encode
    from liber_features.uil.interest import InProcess

    info = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))

    def warn(message: str) -> None:
        click.echo(message, err=True)

    fc = FollowConfig(poll_s=poll_s, until_idle=until_idle, max_seconds=max_seconds)
    llm, enc = model_backends(*spec)
    publish = sync = None
    if table:
        from liber_features.features.repo import open_store
        from liber_features.features.sync import sync_long_term, write_users_online

        store = open_store(repo)

        def publish(users: list[str]) -> int:
            return write_users_online(store, ledger, users)

        def sync() -> None:
            r = sync_long_term(store, ledger)
            info(f"follow: table rebuilt, {r.users_written} user(s) written online, "
                 f"synced to {r.mark.isoformat() if r.mark else '-'}")

    def committed(parts: list) -> None:
        info(f"follow: committed {len(parts)} partition(s) of {len({x.user_id for x in parts})} user(s)")

    info(f"follow: encoding with {llm.llm_id}, looking for new partitions every {poll_s:g} s")
    with StopOnSignal(warn) as stop:
        s, rep = follow_encode(ledger, InProcess(llm, enc, cfg), llm, enc, cfg, fc, stop=stop, publish=publish,
                               sync=sync, on_commit=committed, say=warn)
    return {**s.as_dict(), **{f"follow_{k}": v for k, v in rep.as_dict().items()}}
