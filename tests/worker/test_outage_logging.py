"""Periodic work (heartbeat, sweep) while the database is away: one warning line per
failure instead of a traceback each time; other errors keep their traceback."""

from __future__ import annotations

import logging
import time

from sqlalchemy import create_engine, text

from worker.runner import LeaseKeeper


def records_of(caplog, what: str, count: int, timeout: float = 10.0) -> list[logging.LogRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if r.getMessage().startswith(f"{what} failed")]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} '{what} failed' lines: {caplog.text}")


def run_keeper(renew, caplog) -> list[logging.LogRecord]:
    keeper = LeaseKeeper(renew, interval=0.05, lease=60.0)
    with caplog.at_level(logging.WARNING, logger="worker.runner"):
        keeper.start()
        try:
            return records_of(caplog, "heartbeat", 3)
        finally:
            keeper.stop()


def test_a_heartbeat_into_an_unreachable_database_logs_one_line(caplog, tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/no/such/folder/service.db")

    def renew() -> bool:
        with engine.connect() as connection:
            return connection.execute(text("select 1")).scalar() == 1

    found = run_keeper(renew, caplog)
    for record in found:
        assert record.levelno == logging.WARNING and record.exc_info is None
        assert record.getMessage() == (
            "heartbeat failed: database unreachable (OperationalError: unable to open "
            "database file); retrying in 0.05s"
        )


def test_a_heartbeat_failing_otherwise_keeps_its_traceback(caplog):
    def renew() -> bool:
        raise ValueError("a bug, not an outage")

    found = run_keeper(renew, caplog)
    assert all(r.levelno == logging.ERROR and r.exc_info for r in found)
    assert "ValueError: a bug, not an outage" in caplog.text
