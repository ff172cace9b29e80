"""A finished task whose message cannot be acknowledged after a broker restart: kombu's
CRITICAL line with a traceback becomes one warning that says why nothing is lost."""

from __future__ import annotations

import logging

import worker.app  # noqa: F401  (installs the filter on Celery's request logger)


def test_couldnt_ack_is_one_warning_without_a_traceback(caplog):
    logger = logging.getLogger("celery.worker.request")
    with caplog.at_level(logging.INFO, logger="celery.worker.request"):
        try:
            raise ConnectionError("Connection closed by server.")
        except ConnectionError as exc:
            # exactly what kombu.message.Message.ack_log_error logs
            logger.critical("Couldn't ack %r, reason:%r", 7, exc, exc_info=True)
        logger.error("Task %s raised", "x")  # other records pass unchanged
    ack, other = caplog.records
    assert (ack.levelname, ack.exc_info) == ("WARNING", None)
    assert ack.getMessage() == (
        "could not acknowledge a finished task's message (delivery tag 7, "
        "ConnectionError('Connection closed by server.')): the broker connection was lost; "
        "if the broker delivers it again, the job's state in the database turns the copy away"
    )
    assert "Traceback" not in caplog.text
    assert (other.levelname, other.getMessage()) == ("ERROR", "Task x raised")
