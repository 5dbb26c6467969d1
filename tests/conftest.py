"""Shared fixtures: moto S3, replicated primaries, credentials that never leak.

Tests import helpers with `from replication import ...` (this directory is put
on sys.path here, so it works under any pytest import mode).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_TESTS = Path(__file__).resolve().parent
if str(_TESTS) not in sys.path:
    sys.path.insert(0, str(_TESTS))
# Use the installed lsvfs when there is one (it has the built C core); fall
# back to the source tree so pure-Python tests run before any build.
if importlib.util.find_spec("lsvfs") is None:
    sys.path.insert(0, str(_TESTS.parent))

from backends import BACKENDS, ReplicaTarget, lsvfs_env, make_target  # noqa: E402
from longrun import LongRun  # noqa: E402
from replication import (  # noqa: E402
    TEST_ACCESS_KEY_ID,
    TEST_REGION,
    TEST_SECRET_ACCESS_KEY,
    AuthMotoS3,
    MakePrimary,
    MotoS3,
    ReplicatedPrimary,
)

from lsvfs.storage.redact import redact_url  # noqa: E402

log = logging.getLogger("lsvfs.tests")

# No test may reach a cloud metadata service (only 127.0.0.1 is ours): point
# google-auth's GCE probe at a closed local port and switch it off.
os.environ["NO_GCE_CHECK"] = "true"
os.environ["GCE_METADATA_HOST"] = "127.0.0.1:9"
os.environ["GCE_METADATA_IP"] = "127.0.0.1:9"

_PRIMARIES = pytest.StashKey[list[ReplicatedPrimary]]()
_OUTCOME = pytest.StashKey[str]()
_S3_FIXTURES = {"moto_s3", "s3_server", "s3_bucket", "s3_primary", "moto_s3_auth"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use an S3 fixture, or are parametrized with storage="s3", get
    the `s3` marker (deselect them with -m 'not s3')."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if _S3_FIXTURES & set(getattr(item, "fixturenames", ())) or (
            callspec is not None and callspec.params.get("storage") == "s3"
        ):
            item.add_marker(pytest.mark.s3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach each primary's litestream log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.stash[_OUTCOME] = rep.outcome
    if rep.failed:
        for i, p in enumerate(item.stash.get(_PRIMARIES, [])):
            rep.sections.append((f"litestream log #{i} ({redact_url(p.replica_url)})", p.log_text(tail=200)))


# ---------------------------------------------------------------------------
# long runs

_LONG_MARKERS = {"stress": "LSVFS_STRESS_SECONDS", "chaos": "LSVFS_CHAOS_SECONDS", "soak": "LSVFS_SOAK_SECONDS"}


@pytest.fixture(autouse=True)
def long_run(request: pytest.FixtureRequest) -> Iterator[LongRun | None]:
    """For a test marked stress, chaos or soak: a LongRun watching the process
    (tests/longrun.py). After the test (every other fixture is torn down first, as
    this one is set up first) it prints the run's figures and fails the test if a
    replica, thread or descriptor was left behind, a cache went over its budget,
    snapshots piled up, or (on a long run) RSS kept growing."""
    marks = [m for m in _LONG_MARKERS if request.node.get_closest_marker(m) is not None]
    if not marks:
        yield None
        return
    seconds = max(float(os.environ.get(_LONG_MARKERS[m]) or 0) for m in marks)
    run = LongRun(request.node.nodeid, seconds)
    yield run
    figures = run.finish()
    figures["result"] = request.node.stash.get(_OUTCOME, "error")
    run.record(figures)
    for k, v in figures.items():
        request.node.user_properties.append((k, v))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = "long run: " + " ".join(f"{k}={v}" for k, v in figures.items())
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)
    log.info("%s", line)
    if run.problems and figures["result"] == "passed":
        pytest.fail(f"resources not back to their bounds after the run: {run.problems_text()}", pytrace=False)


# ---------------------------------------------------------------------------
# S3


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """The session's moto S3 server (127.0.0.1, random port)."""
    with MotoS3() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(moto_s3: MotoS3) -> str:
    """Endpoint URL of the session's moto S3 server, e.g. http://127.0.0.1:41234."""
    return moto_s3.endpoint


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Test credentials in the environment for this test only (boto3's default chain)."""
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "LITESTREAM_ACCESS_KEY_ID", "LITESTREAM_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_bucket(moto_s3: MotoS3, s3_env: None) -> str:
    """A fresh empty bucket on the moto server, with credentials set for this test."""
    return moto_s3.create_bucket()


@pytest.fixture(scope="session")
def moto_s3_auth() -> Iterator[AuthMotoS3]:
    """A separate moto (own process) that enforces credentials; started only if used."""
    with AuthMotoS3() as server:
        yield server


# ---------------------------------------------------------------------------
# the other backends' servers: one of each per session, started on first use


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Any]:
    from servers import GCSEmulator

    server = GCSEmulator().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azure_server() -> Iterator[Any]:
    import shutil

    from servers import Azurite

    if not Azurite.binary().exists() and shutil.which("npm") is None:
        pytest.skip("npm is not installed, so Azurite (npm package `azurite`) cannot be installed")
    server = Azurite().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sftp_server() -> Iterator[Any]:
    from servers import SFTPServer, scratch

    server = SFTPServer(scratch("sftp")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def webdav_server() -> Iterator[Any]:
    from servers import WebDAVServer, scratch

    server = WebDAVServer(scratch("webdav") / "root").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[Any]:
    from servers import NATSServer, scratch

    server = NATSServer(scratch("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def webdavs_server() -> Iterator[Any]:
    """wsgidav over HTTPS with a certificate from a CA made for this session (server.tls.ca)."""
    from servers import WebDAVServer, make_ca, scratch

    base = scratch("webdavs")
    server = WebDAVServer(base / "root", tls=make_ca(base / "ca")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_token_server() -> Iterator[Any]:
    """A second nats-server that takes NATS_TOKEN instead of a user and password."""
    from servers import NATS_TOKEN, NATSServer, scratch

    server = NATSServer(scratch("nats-token"), token=NATS_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def oss_server(moto_s3: MotoS3) -> Iterator[Any]:
    from servers import OSSGateway

    gateway = OSSGateway().start()
    yield (moto_s3, gateway)
    gateway.stop()


@pytest.fixture
def replica_target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Factory: `replica_target(kind)` is a fresh ReplicaTarget on the session's server of `kind`."""

    def make(kind: str) -> ReplicaTarget:
        if kind not in BACKENDS:
            raise ValueError(f"unknown backend {kind!r}; one of {BACKENDS}")
        server = request.getfixturevalue(f"{kind}_server")
        lsvfs_env(monkeypatch, kind)
        return make_target(kind, server)

    return make


# ---------------------------------------------------------------------------
# replicated primaries

@pytest.fixture
def replicated_primary(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakePrimary]:
    """Factory: `make_primary(storage="file"|"s3"|one of backends.BACKENDS, page_size=4096, **config)`.

    `config` goes to ReplicatedPrimary (sync_interval, snapshot_interval,
    l0_retention, levels, ...). S3 primaries get a fresh bucket on the
    session's moto server and test credentials in the environment. Every
    primary's litestream is stopped at teardown, pass or fail.
    """
    created: list[ReplicatedPrimary] = []
    request.node.stash[_PRIMARIES] = created

    def make(storage: str = "file", page_size: int = 4096, **config: Any) -> ReplicatedPrimary:
        s3: MotoS3 | None = None
        if storage in BACKENDS:
            config["target"] = request.getfixturevalue("replica_target")(storage)
        elif storage == "s3":
            s3 = request.getfixturevalue("moto_s3")
            request.getfixturevalue("s3_env")
        workdir = tmp_path / f"primary{len(created)}"
        p = ReplicatedPrimary(workdir, storage=storage, page_size=page_size, s3=s3, **config)  # type: ignore[arg-type]
        created.append(p)
        return p

    try:
        yield make
    finally:
        for p in created:
            try:
                p.close()
            except Exception:  # noqa: BLE001 - keep closing the others
                log.exception("closing %r failed", p)


@pytest.fixture
def make_primary(replicated_primary: MakePrimary) -> MakePrimary:
    """Alias of `replicated_primary`."""
    return replicated_primary


@pytest.fixture
def file_primary(replicated_primary: MakePrimary) -> ReplicatedPrimary:
    """A primary replicated to a directory, default settings."""
    return replicated_primary("file")


@pytest.fixture
def s3_primary(replicated_primary: MakePrimary) -> ReplicatedPrimary:
    """A primary replicated to a fresh moto bucket, default settings."""
    return replicated_primary("s3")
