"""lsvfs.backoff: the delays, the retry loop and the failure log, with a fake clock."""

from __future__ import annotations

import logging

import pytest

from lsvfs.backoff import Backoff, log_failure, retry
from lsvfs.errors import MissingFileError, StorageError

log = logging.getLogger("lsvfs.test")


def test_delays_double_up_to_the_bound_and_reset() -> None:
    b = Backoff(0.02, 0.1)
    assert [b.next() for _ in range(5)] == [0.02, 0.04, 0.08, 0.1, 0.1]
    b.reset()
    assert b.next() == 0.02


def test_retry_sleeps_between_attempts_and_raises_the_last_error() -> None:
    slept: list[float] = []
    calls: list[int] = []
    retried: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StorageError("503")
        return "ok"

    kw = dict(retry_on=(StorageError,), backoff=Backoff(0.02, 1.0), what="f", log=log, sleep=slept.append)
    assert retry(flaky, attempts=3, on_retry=lambda: retried.append(1), **kw) == "ok"  # type: ignore[arg-type]
    assert slept == [0.02, 0.04] and len(retried) == 2
    calls.clear()
    with pytest.raises(StorageError):
        retry(flaky, attempts=2, **kw)  # type: ignore[arg-type]


def test_retry_never_retries_what_cannot_heal_nor_once_stopped() -> None:
    slept: list[float] = []

    def missing() -> None:
        raise MissingFileError("gone")

    with pytest.raises(MissingFileError):
        retry(missing, attempts=5, retry_on=(StorageError,), never=(MissingFileError,), backoff=Backoff(0.1, 1),
              what="m", log=log, sleep=slept.append)
    with pytest.raises(MissingFileError):
        retry(missing, attempts=5, retry_on=(StorageError,), backoff=Backoff(0.1, 1), what="m", log=log,
              stopped=lambda: True, sleep=slept.append)
    assert slept == []


def test_failures_are_one_line_when_expected_and_a_traceback_otherwise(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lsvfs.test"):
        shown = log_failure(log, StorageError("503"), expected=(StorageError,), failed="poll of r failed",
                            unexpectedly="poll of r failed unexpectedly", then="; retrying in 0.1s")
        odd = log_failure(log, KeyError("x"), expected=(StorageError,), failed="poll of r failed",
                          unexpectedly="poll of r failed unexpectedly")
    assert shown == "503" and odd == "KeyError('x')"
    first, second = caplog.records
    assert first.levelno == logging.WARNING and first.getMessage() == "poll of r failed: 503; retrying in 0.1s" and not first.exc_info
    assert second.levelno == logging.ERROR and second.exc_info is not None
