"""ledger/stopping.py: SIGTERM exits 143 at once outside a critical section, after it inside one."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from liber_features.ledger.stopping import critical, exit_on_sigterm


@pytest.fixture
def sigterm_exits():
    before = signal.getsignal(signal.SIGTERM)
    exit_on_sigterm()
    yield
    signal.signal(signal.SIGTERM, before)


def test_outside_a_section_sigterm_exits_143_at_once(sigterm_exits):
    steps = []
    with pytest.raises(SystemExit) as exc:
        os.kill(os.getpid(), signal.SIGTERM)
        steps.append("after kill")
    assert exc.value.code == 143 and steps == []


def test_inside_nested_sections_the_exit_waits_for_the_outermost_to_end(sigterm_exits):
    steps = []
    with pytest.raises(SystemExit) as exc:
        with critical():
            with critical():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("inner body finished")
            steps.append("outer body finished")
        steps.append("after the section")
    assert exc.value.code == 143
    assert steps == ["inner body finished", "outer body finished"]
    # The stop was consumed: a later section ends normally.
    with critical():
        steps.append("next section")
    assert steps[-1] == "next section"


def test_a_write_lock_taken_inside_a_section_is_released_before_the_exit(sigterm_exits):
    lock = threading.Lock()
    with pytest.raises(SystemExit):
        with critical(), lock:
            os.kill(os.getpid(), signal.SIGTERM)
    assert lock.acquire(blocking=False)  # the clean-up after the exit can take it again


def test_other_threads_sections_do_not_hold_back_the_main_threads_exit(sigterm_exits):
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with critical():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=other)
    t.start()
    inside.wait(5)
    try:
        with pytest.raises(SystemExit) as exc:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pthread_kill(threading.main_thread().ident, 0)  # let the handler run here
            raise AssertionError("the handler did not raise")
        assert exc.value.code == 143
    finally:
        leave.set()
        t.join(5)


def test_a_sigterm_inside_a_ledger_transaction_exits_after_its_commit(sigterm_exits, ledger):
    from sqlalchemy import func, select

    from liber_features.ledger.store import runs

    with pytest.raises(SystemExit) as exc:
        with ledger.begin() as conn:
            os.kill(os.getpid(), signal.SIGTERM)
            conn.execute(runs.insert().values(
                kind="encode", status="running", started_us=1, params="{}", worker="w", lease_us=1,
                heartbeat_us=1, partitions_done=0, llm_calls=0, llm_calls_committed=0,
                rejected_commits=0))
    assert exc.value.code == 143
    with ledger.engine.connect() as conn:  # committed whole, and the ledger is free to write
        assert conn.execute(select(func.count()).select_from(runs)).scalar() == 1
    run_id = ledger.start_run("encode", {})
    assert run_id == 2
