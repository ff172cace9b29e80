"""db.jobs on the real database: the atomic lease, stale requeue, transitions, metrics."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from db import jobs
from db.models import Job, JobLog, JobMetric, utcnow


def _claim(session_factory, job_id, worker, now=None, lease=30.0):
    with session_factory() as session:
        return jobs.claim_job(session, job_id, worker, lease, now=now)


def _job(session_factory, job_id) -> Job:
    with session_factory(expire_on_commit=False) as session:
        return session.get(Job, job_id)


def test_claim_job_one_of_two_sessions_wins(session_factory, job_id):
    first, second = session_factory(), session_factory()
    try:
        results = [jobs.claim_job(s, job_id, f"w{i}", 30) for i, s in enumerate((first, second))]
    finally:
        first.close(), second.close()
    assert results == [True, False]
    job = _job(session_factory, job_id)
    assert job.status == "running" and job.lease_owner == "w0" and job.attempts == 1
    assert job.started_at is not None and job.heartbeat_at is not None


def _claim_in_process(url, job_id, worker, barrier, results):
    from db.session import engine_for_url, make_session_factory

    engine = engine_for_url(url)
    barrier.wait()
    with make_session_factory(engine)() as session:
        results.put(jobs.claim_job(session, job_id, worker, 30))
    engine.dispose()


def test_claim_job_is_atomic_across_processes(settings, session_factory, job_id):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [
        ctx.Process(
            target=_claim_in_process,
            args=(settings.database_url, job_id, f"p{i}", barrier, results),
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    won = [results.get(timeout=5) for _ in procs]
    assert sorted(won) == [False, False, False, True]
    assert _job(session_factory, job_id).attempts == 1


def test_claim_job_fails_while_lease_live_and_succeeds_after_expiry(session_factory, job_id):
    now = utcnow()
    assert _claim(session_factory, job_id, "a", now=now, lease=10)
    assert not _claim(session_factory, job_id, "b", now=now + timedelta(seconds=9))
    assert _claim(session_factory, job_id, "b", now=now + timedelta(seconds=11))
    job = _job(session_factory, job_id)
    assert job.lease_owner == "b" and job.attempts == 2
    assert not _claim(session_factory, job_id, "c", now=now + timedelta(seconds=60))  # max 2


def test_renew_lease_only_for_the_holder(session_factory, job_id):
    assert _claim(session_factory, job_id, "a")
    with session_factory() as session:
        assert jobs.renew_lease(session, job_id, "a", 30)
        assert not jobs.renew_lease(session, job_id, "b", 30)
        assert not jobs.mark_succeeded(session, job_id, "b")
        assert jobs.mark_succeeded(session, job_id, "a")
        assert not jobs.renew_lease(session, job_id, "a", 30)  # finished: no lease
    job = _job(session_factory, job_id)
    assert job.status == "succeeded" and job.lease_owner is None and job.finished_at


def test_requeue_stale_jobs_then_give_up_after_max_attempts(session_factory, job_id):
    start = utcnow()
    assert _claim(session_factory, job_id, "a", now=start)
    with session_factory() as session:
        assert jobs.requeue_stale_jobs(session, start + timedelta(seconds=5), 60) == []
        assert jobs.requeue_stale_jobs(session, start + timedelta(seconds=61), 60) == [job_id]
    job = _job(session_factory, job_id)
    assert job.status == "queued" and job.lease_owner is None and job.attempts == 1
    later = start + timedelta(seconds=100)
    assert _claim(session_factory, job_id, "b", now=later)
    with session_factory() as session:
        assert jobs.requeue_stale_jobs(session, later + timedelta(seconds=61), 60) == []
        messages = list(session.scalars(select(JobLog.message).where(JobLog.job_id == job_id)))
    job = _job(session_factory, job_id)
    assert job.status == "failed" and job.error == "gave up after 2 attempts: worker lost"
    assert job.finished_at is not None
    lost = "worker lost (heartbeat stale); requeued after attempt 1"
    assert f"{lost} (no heartbeat for 61 s from worker a)" in messages, messages


def test_a_heartbeat_gone_stale_in_a_database_outage_gets_its_attempt_back(session_factory, job_id):
    start = utcnow()
    for attempt in (1, 2):  # the second time the job is at max_attempts (2): not failed
        assert _claim(session_factory, job_id, f"w{attempt}", now=start)
        began = start + timedelta(seconds=10)  # the sweep last reached the database then
        with session_factory() as session:
            assert jobs.requeue_stale_jobs(
                session, start + timedelta(seconds=90), 60, outage_began=began
            ) == [job_id]
            message = session.scalars(
                select(JobLog.message).where(JobLog.job_id == job_id).order_by(JobLog.id.desc())
            ).first()
        job = _job(session_factory, job_id)
        assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
        assert message == (
            "database unreachable for longer than the lease (no heartbeat for 90 s); "
            "requeued with attempt 1 given back, it resumes from its latest checkpoint"
        )
    assert _claim(session_factory, job_id, "w3", now=start)
    assert _job(session_factory, job_id).attempts == 1


def test_a_heartbeat_already_stale_before_the_outage_is_the_worker_lost(session_factory, job_id):
    start = utcnow()
    assert _claim(session_factory, job_id, "w", now=start)
    with session_factory() as session:
        # the heartbeat was 70 s old when the outage began: the worker was gone already
        assert jobs.requeue_stale_jobs(
            session, start + timedelta(seconds=90), 60, outage_began=start + timedelta(seconds=70)
        ) == [job_id]
        messages = list(session.scalars(select(JobLog.message).where(JobLog.job_id == job_id)))
    assert _job(session_factory, job_id).attempts == 1
    lost = "worker lost (heartbeat stale); requeued after attempt 1"
    assert f"{lost} (no heartbeat for 90 s from worker w)" in messages, messages


def test_a_running_job_that_never_sent_a_heartbeat_is_requeued_and_says_so(session_factory, job_id):
    assert _claim(session_factory, job_id, "w")
    with session_factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=None))
        session.commit()
        assert jobs.requeue_stale_jobs(session, utcnow(), 60) == [job_id]
        messages = list(session.scalars(select(JobLog.message).where(JobLog.job_id == job_id)))
    assert _job(session_factory, job_id).status == "queued"
    lost = "worker lost (heartbeat stale); requeued after attempt 1"
    assert f"{lost} (no heartbeat ever from worker w)" in messages, messages


def _claimed_evaluation(session, job_id, max_attempts):
    """A new evaluation of the job, claimed by worker "a" now: (its id, now)."""
    from db import evaluations
    from db.models import Evaluation

    row = Evaluation(job_id=job_id, preset="fast", n=10, eps=[0.1])
    session.add(row)
    session.commit()
    start = utcnow()
    assert evaluations.claim_evaluation(session, row.id, "a", 10, max_attempts, now=start)
    return row.id, start


def test_evaluation_stale_in_an_outage_gets_its_attempt_back(session_factory, job_id):
    from db import evaluations
    from db.models import Evaluation

    with session_factory() as session:
        eid, start = _claimed_evaluation(session, job_id, max_attempts=1)
        later, began = start + timedelta(seconds=90), start + timedelta(seconds=5)
        assert evaluations.requeue_stale_evaluations(session, later, 60, 1, began) == [eid]
        row = session.get(Evaluation, eid)
        session.refresh(row)
        assert (row.status, row.attempts) == ("queued", 0)


def test_outage_clock_remembers_the_last_answer_before_an_outage_for_stale_after():
    from worker.sweep import OutageClock

    t0 = utcnow()
    at = lambda seconds: t0 + timedelta(seconds=seconds)  # noqa: E731
    clock = OutageClock(stale_after=60, now=t0)
    clock.answered(at(10))
    assert clock.began is None
    clock.unreachable()
    clock.unreachable()
    assert clock.began == at(10)
    clock.answered(at(100))  # back: remembered until 60 s after this answer
    clock.answered(at(150))
    assert clock.began == at(10)
    clock.unreachable()  # a second outage within the window extends the first
    clock.answered(at(200))
    clock.answered(at(250))
    assert clock.began == at(10)
    clock.answered(at(261))
    assert clock.began is None
    clock.unreachable()
    assert clock.began == at(261)


def test_stale_job_with_cancel_pending_ends_canceled(session_factory, job_id):
    start = utcnow()
    assert _claim(session_factory, job_id, "a", now=start)
    with session_factory() as session:
        jobs.request_cancel(session, session.get(Job, job_id))
        session.commit()
        assert jobs.requeue_stale_jobs(session, start + timedelta(seconds=61), 60) == []
    assert _job(session_factory, job_id).status == "canceled"


def test_cancel_queued_ends_at_once_and_running_sets_flag(session_factory, job_id, make_user):
    with session_factory() as session:
        job = session.get(Job, job_id)
        jobs.request_cancel(session, job)
        assert job.status == "canceled" and job.finished_at is not None
        with pytest.raises(jobs.InvalidTransitionError, match="is canceled"):
            jobs.request_cancel(session, job)
        jobs.resume_job(session, job)
        session.commit()
    assert _claim(session_factory, job_id, "a")
    with session_factory() as session:
        job = session.get(Job, job_id)
        jobs.request_cancel(session, job)
        session.commit()
        assert job.status == "running" and jobs.is_cancel_requested(session, job_id)
        assert not _claim(session_factory, job_id, "b", now=utcnow() + timedelta(hours=1))


def test_resume_resets_attempts_and_refuses_other_states(session_factory, job_id):
    assert _claim(session_factory, job_id, "a")
    with session_factory() as session:
        with pytest.raises(jobs.InvalidTransitionError):
            jobs.resume_job(session, session.get(Job, job_id))
        assert jobs.mark_failed(session, job_id, "boom", "a")
        job = session.get(Job, job_id)
        jobs.resume_job(session, job)
        session.commit()
        assert (job.status, job.error, job.attempts, job.finished_at) == ("queued", None, 0, None)
        assert jobs.claim_job(session, job_id, "b", 30)
        assert jobs.mark_succeeded(session, job_id, "b")
        with pytest.raises(jobs.InvalidTransitionError, match="cannot become queued"):
            jobs.resume_job(session, session.get(Job, job_id))


def test_record_metric_upserts_a_rerun_epoch(session_factory, job_id):
    with session_factory() as session:
        jobs.record_metric(session, job_id, "train", 1, {"train_loss": 2.0, "lr": 0.1})
        jobs.record_metric(session, job_id, "train", 1, {"train_loss": 1.5, "val_pgd_acc": "nan"})
        jobs.record_metric(session, job_id, "train", 2, {"train_loss": float("inf")})
        session.commit()
        rows = session.scalars(select(JobMetric).order_by(JobMetric.epoch)).all()
        assert [(r.epoch, r.train_loss, r.lr, r.val_pgd_acc, r.seq) for r in rows] == [
            (1, 1.5, None, None, 2),  # the rewrite took the next number: streams send it
            (2, None, None, None, 3),
        ]


def test_queued_jobs_to_resend_only_after_the_delay(session_factory, job_id):
    now = utcnow()
    with session_factory() as session:
        assert jobs.queued_jobs_to_resend(session, now, 300) == []
        assert jobs.queued_jobs_to_resend(session, now + timedelta(seconds=301), 300) == [job_id]
        assert jobs.queued_jobs_to_resend(session, now + timedelta(seconds=302), 300) == []


def _resend_times(session_factory, job_id, sent, resend_after, horizon):
    """Seconds after ``sent`` at which a sweep every second sends the job again."""
    times = []
    with session_factory() as session:
        for second in range(1, horizon + 1):
            if jobs.queued_jobs_to_resend(session, sent + timedelta(seconds=second), resend_after):
                times.append(second)
    return times


def test_resend_waits_double_each_time_up_to_the_cap(session_factory, job_id):
    sent = _job(session_factory, job_id).sent_at
    # waits 10, 20, 40, 80, then 80 (8 x 10) for good: 10, 30, 70, 150, 230, 310
    assert _resend_times(session_factory, job_id, sent, 10, 330) == [11, 32, 73, 154, 235, 316]
    assert _job(session_factory, job_id).resends == 6
    assert [jobs.resend_interval(300, k) for k in (0, 1, 2, 3, 4, 100)] == [
        300,
        600,
        1200,
        2400,
        2400,
        2400,
    ]


def test_requeue_and_resume_start_the_resend_wait_afresh(session_factory, job_id):
    sent = _job(session_factory, job_id).sent_at
    with session_factory() as session:
        for seconds in (301, 902, 2103):
            assert jobs.queued_jobs_to_resend(session, sent + timedelta(seconds=seconds), 300) == [
                job_id
            ]
    assert _job(session_factory, job_id).resends == 3
    start = utcnow()
    assert _claim(session_factory, job_id, "a", now=start)
    with session_factory() as session:
        assert jobs.requeue_stale_jobs(session, start + timedelta(seconds=61), 60) == [job_id]
    job = _job(session_factory, job_id)
    assert job.resends == 0
    with session_factory() as session:
        # the first re-send after the requeue comes after 300 s again, not 2,400 s
        assert jobs.queued_jobs_to_resend(session, job.sent_at + timedelta(seconds=299), 300) == []
        assert jobs.queued_jobs_to_resend(session, job.sent_at + timedelta(seconds=301), 300) == [
            job_id
        ]
        job = session.get(Job, job_id)
        jobs.request_cancel(session, job)
        jobs.resume_job(session, job)
        session.commit()
        assert (job.status, job.resends) == ("queued", 0)


def _resend_in_process(url, now, barrier, results):
    from db.session import engine_for_url, make_session_factory

    engine = engine_for_url(url)
    barrier.wait()
    with make_session_factory(engine)() as session:
        results.put(jobs.queued_jobs_to_resend(session, now, 300))
    engine.dispose()


def test_concurrent_sweeps_send_a_due_job_once(settings, session_factory, job_id):
    later = _job(session_factory, job_id).sent_at + timedelta(seconds=301)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    args = (settings.database_url, later, barrier, results)
    procs = [ctx.Process(target=_resend_in_process, args=args) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    sent = [results.get(timeout=5) for _ in procs]
    assert sorted(sent) == [[], [], [], [job_id]]
    assert _job(session_factory, job_id).resends == 1


def test_add_log_keeps_order(session_factory, job_id):
    with session_factory() as session:
        for i in range(3):
            jobs.add_log(session, job_id, f"line {i}")
        session.commit()
        lines = session.execute(
            select(JobLog.seq, JobLog.message).where(JobLog.job_id == job_id).order_by(JobLog.id)
        )
        assert [tuple(line) for line in lines] == [(1, "line 0"), (2, "line 1"), (3, "line 2")]
        assert session.scalar(select(func.count()).select_from(JobLog)) == 3


def test_writers_at_once_number_a_jobs_rows_without_gaps_or_repeats(session_factory, job_id):
    """Threads that each write log lines and metric rows of one job in their own short
    transactions, as the runner, its heartbeat and the sweep do: every row gets its own
    number, 1 to n, and none is lost to a clash."""
    import threading

    writers, each = 6, 8
    failures: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(writer: int) -> None:
        try:
            start.wait(timeout=30)
            for i in range(each):
                with session_factory() as session:
                    jobs.add_log(session, job_id, f"{writer}.{i}")
                    session.commit()
                with session_factory() as session:
                    jobs.record_metric(session, job_id, "train", writer * each + i, {"lr": 0.1})
                    session.commit()
        except BaseException as exc:  # reported below, with the writer's rows missing
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert failures == []
    with session_factory() as session:
        for model in (JobLog, JobMetric):
            seqs = session.scalars(select(model.seq).where(model.job_id == job_id)).all()
            assert sorted(seqs) == list(range(1, writers * each + 1)), model.__tablename__


def test_evaluation_lease_is_exclusive_and_stale_ones_requeue(session_factory, job_id):
    from db import evaluations
    from db.models import Evaluation

    with session_factory() as session:
        eid, start = _claimed_evaluation(session, job_id, max_attempts=2)
        assert not evaluations.claim_evaluation(session, eid, "b", 10, max_attempts=2, now=start)
        assert not evaluations.renew_evaluation_lease(session, eid, "b", 10)
        assert evaluations.requeue_stale_evaluations(
            session, start + timedelta(seconds=61), 60, 2
        ) == [eid]
        assert evaluations.claim_evaluation(session, eid, "b", 10, max_attempts=2)
        assert not evaluations.finish_evaluation(session, eid, "a", "succeeded")
        assert evaluations.finish_evaluation(session, eid, "b", "succeeded", results=[{"eps": 0.1}])
        row = session.get(Evaluation, eid)
        assert (row.status, row.attempts, row.lease_owner) == ("succeeded", 2, None)


def test_queued_evaluations_are_sent_again_only_after_the_delay(session_factory, job_id):
    from db import evaluations
    from db.models import Evaluation

    now = utcnow()
    with session_factory() as session:
        row = Evaluation(
            job_id=job_id, status="queued", preset="fast", n=10, eps=[0.1], sent_at=now
        )
        running = Evaluation(job_id=job_id, status="running", preset="fast", n=10, eps=[0.1])
        session.add_all([row, running])
        session.commit()
        later = now + timedelta(seconds=301)
        assert evaluations.queued_evaluations_to_resend(session, now, 300) == []
        assert evaluations.queued_evaluations_to_resend(session, later, 300) == [row.id]
        assert evaluations.queued_evaluations_to_resend(session, later, 300) == []  # stamped
        # the next wait is twice as long
        again = later + timedelta(seconds=599)
        assert evaluations.queued_evaluations_to_resend(session, again, 300) == []
        again += timedelta(seconds=2)
        assert evaluations.queued_evaluations_to_resend(session, again, 300) == [row.id]
