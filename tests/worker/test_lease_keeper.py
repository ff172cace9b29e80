"""The lease keeper's own log: a late heartbeat is reported before the sweep acts on it."""

from __future__ import annotations

import logging
import re
import threading
import time

from worker.runner import LeaseKeeper

LATE = re.compile(
    r"heartbeat late: (\d+\.\d) s since the last renewal \(this one took (\d+\.\d) s to "
    r"write\), the lease lasts 0\.4 s: is the machine overloaded\?"
)


def run_until(keeper: LeaseKeeper, renewals: threading.Semaphore, count: int) -> None:
    keeper.start()
    try:
        for _ in range(count):
            assert renewals.acquire(timeout=30), "the keeper stopped renewing"
    finally:
        keeper.stop()


def test_a_renewal_that_lands_after_half_the_lease_is_logged_with_its_gap(caplog):
    renewals = threading.Semaphore(0)
    calls = []

    def slow_renew() -> bool:  # the second renewal takes 0.3 s: past half of a 0.4 s lease
        calls.append(1)
        if len(calls) == 2:
            time.sleep(0.3)
        renewals.release()
        return True

    with caplog.at_level(logging.WARNING, logger="worker"):
        run_until(LeaseKeeper(slow_renew, interval=0.01, lease=0.4), renewals, 3)
    late = [m for r in caplog.records if (m := LATE.fullmatch(r.getMessage()))]
    assert late, caplog.text
    gap, took = (float(v) for v in late[0].groups())
    assert took >= 0.3 and gap >= took, late[0].group(0)


def test_renewals_in_time_log_nothing(caplog):
    renewals = threading.Semaphore(0)

    def renew() -> bool:
        renewals.release()
        return True

    with caplog.at_level(logging.WARNING, logger="worker"):
        run_until(LeaseKeeper(renew, interval=0.01, lease=60.0), renewals, 5)
    assert not [r for r in caplog.records if r.name == "worker"], caplog.text


def test_a_renewal_refused_sets_lost_and_ends_the_keeper(caplog):
    keeper = LeaseKeeper(lambda: False, interval=0.01, lease=60.0)
    with caplog.at_level(logging.WARNING, logger="worker"):
        keeper.start()
        assert keeper.lost.wait(30)
        keeper.join(30)
    assert not keeper.is_alive()
    assert "lease lost: another worker owns this task now" in caplog.text


def test_the_stall_watchdog_waits_for_a_measured_step_and_leaves_autoattack_alone():
    from types import SimpleNamespace

    from worker.runner import StallWatchdog

    watchdog = StallWatchdog("0" * 32, factory=None, limit=60)
    assert watchdog.stalled() is None  # no trainer yet
    callback = SimpleNamespace(alive_at=None, longest_gap=None, position=("train", 2))
    watchdog.callback = callback
    assert watchdog.stalled() is None  # loading data before the first step: not watched
    callback.alive_at = time.monotonic() - 100
    assert watchdog.stalled() is None  # one step so far: how long a step takes is unknown
    callback.longest_gap = 1.0
    callback.alive_at = time.monotonic() - 30
    assert watchdog.stalled() is None  # within the limit
    callback.alive_at = time.monotonic() - 61
    assert watchdog.stalled().startswith(
        "stalled: no training step for 61 s in train epoch 2 (DYART_STALL_SECONDS=60), "
    )
    callback.longest_gap = 20.0  # steps this slow on this device: 4 x 20 s is the limit
    assert watchdog.stalled() is None
    callback.alive_at = time.monotonic() - 81
    assert "(4 times the longest gap between steps so far, 20 s)" in watchdog.stalled()
    callback.position = ("evaluate", 0)
    assert watchdog.stalled() is None  # one AutoAttack attack may report nothing for hours
    callback.position, watchdog.limit = ("train", 2), 0
    assert watchdog.stalled() is None  # DYART_STALL_SECONDS=0: never
