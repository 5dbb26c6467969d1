"""Real replication for tests: a moto S3 server and a primary replicated by `litestream`.

Every integration test of lsvfs stands on this module, so it favours
determinism over cleverness:

- `MotoS3` runs moto's S3 in a thread of the test process on 127.0.0.1.
- `AuthMotoS3` runs a second moto in its own process with IAM auth enforced
  (moto's auth switch is process-global, so it cannot share the first one).
- `ReplicatedPrimary` owns a WAL-mode SQLite primary (apsw) and a real
  `litestream replicate` subprocess writing to a directory or to moto.
  `wait_replicated()` makes "the replica has everything I committed" a
  checked fact instead of a sleep.

Everything is bounded in time, and every subprocess is killed on close (and at
interpreter exit as a last resort).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import apsw

from lsvfs.demo import find_litestream as litestream_binary

log = logging.getLogger("lsvfs.tests.replication")

TEST_ACCESS_KEY_ID = "test"
TEST_SECRET_ACCESS_KEY = "test"
TEST_REGION = "us-east-1"

MARKER_TABLE = "_lsvfs_test_marker"
"""Table the helper owns in every primary; `wait_replicated` bumps its row."""

FAST_COMPACTION: dict[str, Any] = {
    "snapshot_interval": "2s",
    "l0_retention": "1s",
    "l0_retention_check_interval": "1s",
    "levels": ["1s", "3s"],
}
"""Config knobs that give L0, L1, L2 and L9 files, with deleted L0 files, within seconds."""

StorageKind = str
""""file", "s3", or a backend of tests/backends.py ("gcs", "azure", "sftp", "webdav", "nats", "oss")."""
Duration = str | float | int


class ReplicationError(AssertionError):
    """The replication fixture did not reach the state a test asked for.

    An AssertionError so pytest reports it as a test failure; the message
    carries the tail of the litestream log.
    """


RESTORE_SECONDS_PER_FILE = 0.05
"""What wait_replicated's budget grows by per file in the replica: a restore lists and reads
them (on the GCS emulator a few thousand L0 files took ~30 s)."""

MakePrimary = Callable[..., "ReplicatedPrimary"]
"""Type of the `replicated_primary` / `make_primary` fixture (a factory)."""


# ---------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



def duration(value: Duration) -> str:
    """A Go duration string: "50ms" passes through, 0.05 (seconds) becomes "50ms"."""
    if isinstance(value, str):
        return value
    return f"{int(round(float(value) * 1000))}ms"


def litestream_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a litestream subprocess.

    Starts from os.environ without AWS_* and LITESTREAM_* variables, so the
    machine's AWS_CA_BUNDLE (which makes litestream's S3 client refuse to
    start) and any credentials a test monkeypatched never leak in; then adds
    the moto test credentials and `extra`.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "LITESTREAM_"))}
    env.update(
        AWS_ACCESS_KEY_ID=TEST_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=TEST_SECRET_ACCESS_KEY,
        AWS_REGION=TEST_REGION,
        AWS_EC2_METADATA_DISABLED="true",
    )
    if extra:
        env.update(extra)
    return env


def s3_url(bucket: str, path: str, endpoint: str, region: str = TEST_REGION) -> str:
    """The replica URL litestream and lsvfs both accept for a moto bucket."""
    p = path.strip("/")
    base = f"s3://{bucket}/{p}" if p else f"s3://{bucket}"
    return f"{base}?endpoint={endpoint}&region={region}&force-path-style=true"


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up within {timeout}s: {e}") from e
            time.sleep(0.05)


# ---------------------------------------------------------------------------
# S3


class MotoS3:
    """moto's S3 server in a thread of this process, on 127.0.0.1.

    Holds nothing global but the server: each test makes its own bucket
    with `create_bucket()`, so tests never see each other's objects.
    """

    def __init__(self) -> None:
        self._server: Any = None
        self.endpoint = ""
        self._n = 0
        self._lock = threading.Lock()

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        self._server = server
        self.endpoint = f"http://{host}:{port}"
        log.info("moto S3 at %s", self.endpoint)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client with explicit test credentials (no env involved)."""
        import boto3
        from botocore.config import Config

        kw: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": TEST_REGION,
            "aws_access_key_id": TEST_ACCESS_KEY_ID,
            "aws_secret_access_key": TEST_SECRET_ACCESS_KEY,
            "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        }
        kw.update(kwargs)
        return boto3.session.Session().client("s3", **kw)

    def create_bucket(self, prefix: str = "lsvfs") -> str:
        """A fresh, uniquely named bucket."""
        with self._lock:
            self._n += 1
            name = f"{prefix}-{self._n}-{uuid.uuid4().hex[:8]}"
        self.client().create_bucket(Bucket=name)
        return name

    def url(self, bucket: str, path: str = "db") -> str:
        return s3_url(bucket, path, self.endpoint)

    def bulk_put(self, bucket: str, items: Iterable[tuple[str, bytes]]) -> None:
        """Store many objects fast, e.g. thousands for a pagination test.

        Writes straight into moto's in-process backend (one HTTP PUT costs
        ~3 ms here); listing and reading them still go over HTTP. Falls back
        to PUTs if moto's internals moved.
        """
        items = list(items)
        try:
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.s3.models import s3_backends

            backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
            backend.get_bucket(bucket)
        except Exception:  # noqa: BLE001 - fall back to the public API
            log.info("moto backend not reachable; bulk_put falls back to HTTP PUTs")
            client = self.client()
            for key, value in items:
                client.put_object(Bucket=bucket, Key=key, Body=value)
            return
        for key, value in items:
            backend.put_object(bucket, key, value)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix` (bounded: stops after 100k keys)."""
        out: list[str] = []
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            out.extend(o["Key"] for o in page.get("Contents", ()))
            if len(out) > 100_000:
                break
        return out


class AuthMotoS3:
    """A moto server in its own process that enforces IAM credentials.

    moto checks signatures only when its process-global auth switch is on, so
    this server is separate from `MotoS3`. It starts with a user whose key
    (`access_key_id`/`secret_access_key`) may do anything in S3, and one
    bucket (`bucket`); any other key gets InvalidAccessKeyId, a wrong
    secret SignatureDoesNotMatch.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.access_key_id = ""
        self.secret_access_key = ""
        self.bucket = ""

    def start(self, timeout: float = 20.0) -> AuthMotoS3:
        import boto3

        port = free_port()
        # The first 4 requests (3 IAM setup calls + create_bucket) run unchecked.
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _live_processes.add(self._proc)
        self.endpoint = f"http://127.0.0.1:{port}"
        try:
            _wait_http(self.endpoint + "/moto-api/", timeout)
            kw: dict[str, Any] = {
                "endpoint_url": self.endpoint,
                "region_name": TEST_REGION,
                "aws_access_key_id": TEST_ACCESS_KEY_ID,
                "aws_secret_access_key": TEST_SECRET_ACCESS_KEY,
            }
            iam = boto3.session.Session().client("iam", **kw)
            iam.create_user(UserName="lsvfs")
            key = iam.create_access_key(UserName="lsvfs")["AccessKey"]
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
            }
            iam.put_user_policy(UserName="lsvfs", PolicyName="s3", PolicyDocument=json.dumps(policy))
            self.bucket = "lsvfs-auth"
            boto3.session.Session().client("s3", **kw).create_bucket(Bucket=self.bucket)
        except BaseException:
            self.stop()
            raise
        self.access_key_id = key["AccessKeyId"]
        self.secret_access_key = key["SecretAccessKey"]
        return self

    def client(self, **kwargs: Any) -> Any:
        """An S3 client with the valid key."""
        import boto3

        kw: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": TEST_REGION,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }
        kw.update(kwargs)
        return boto3.session.Session().client("s3", **kw)

    def url(self, path: str = "db") -> str:
        return s3_url(self.bucket, path, self.endpoint)

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, 5.0)
            self._proc = None

    def __enter__(self) -> AuthMotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# the replicated primary


@dataclass(frozen=True)
class RestoreResult:
    """What `litestream restore -json` reported: the output file and its TXID."""

    path: Path
    txid: int


_live_processes: set[subprocess.Popen[bytes]] = set()
"""Strong refs to every child we started, so the atexit net can still kill it."""


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL and reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.1fs; killing", proc.pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    _live_processes.discard(proc)


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live_processes):
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(2)


class ReplicatedPrimary:
    """A WAL-mode SQLite primary replicated by a real `litestream replicate`.

    Config knobs map 1:1 to litestream 0.5.17 YAML (durations as Go strings
    like "50ms", or seconds as numbers). Defaults are fast: litestream looks
    at the WAL every 50 ms (`monitor-interval`; its default of 1 s would make
    every wait a second long) and uploads every 50 ms (`sync-interval`).

    Usage::

        p = ReplicatedPrimary(tmp_path / "p", storage="file")
        p.execute("CREATE TABLE t(x)")
        p.execute("INSERT INTO t VALUES (?)", (1,))
        txid = p.wait_replicated()
        assert p.litestream_restore(tmp_path / "r.db").read_bytes() == p.image()
        p.close()
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        storage: StorageKind = "file",
        page_size: int = 4096,
        s3: MotoS3 | None = None,
        bucket: str | None = None,
        s3_path: str = "db",
        sync_interval: Duration = "50ms",
        monitor_interval: Duration | None = "50ms",
        snapshot_interval: Duration | None = None,
        snapshot_retention: Duration | None = None,
        l0_retention: Duration | None = None,
        l0_retention_check_interval: Duration | None = None,
        levels: Sequence[Duration] | None = None,
        checkpoint_interval: Duration | None = None,
        min_checkpoint_page_count: int | None = None,
        db_options: Mapping[str, Any] | None = None,
        global_options: Mapping[str, Any] | None = None,
        log_level: str = "INFO",
        start: bool = True,
        target: Any = None,
        control_socket: bool = False,
    ) -> None:
        if storage not in ("file", "s3") and target is None:
            raise ValueError(f"storage {storage!r} needs a ReplicaTarget (target=...) from tests/backends.py")
        if storage == "s3" and s3 is None:
            raise ValueError("storage='s3' needs a running MotoS3 (s3=...)")
        self.workdir = Path(workdir).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_kind: StorageKind = storage
        self.page_size = page_size
        self.db_path = self.workdir / "primary.db"
        self.config_path = self.workdir / "litestream.yml"
        self.log_path = self.workdir / "litestream.log"
        self._restore_dir = self.workdir / "restores"
        self._restore_dir.mkdir(exist_ok=True)
        self.s3 = s3
        self.s3_path = s3_path.strip("/")
        self.target = target
        if target is not None:
            self.bucket = None
            self.replica_dir = None
            self.replica_url = target.lsvfs_url
        elif storage == "s3":
            assert s3 is not None
            self.bucket: str | None = bucket or s3.create_bucket()
            self.replica_dir: Path | None = None
            self.replica_url = s3.url(self.bucket, self.s3_path)
        else:
            self.bucket = None
            self.replica_dir = self.workdir / "replica"
            self.replica_url = self.replica_dir.as_uri()
        self.env = litestream_env(target.env if target is not None else None)
        self._marker_seq = 0
        self._restore_n = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None
        self._closed = False
        self.last_txid: int | None = None
        self.files_listed = 0
        """How many files the last listing of the replica found (every level)."""
        self.socket_path: Path | None = None
        """litestream's control socket, with `control_socket`: under a short dir of its own in /tmp,
        since an AF_UNIX path holds at most 107 bytes and pytest's tmp paths can be longer. It
        answers once litestream has started (after a `wait_replicated()` it does)."""
        if control_socket:
            self.socket_path = Path(tempfile.mkdtemp(prefix="ls", dir="/tmp")) / "ctl.sock"

        self.conn = apsw.Connection(str(self.db_path))
        self.conn.set_busy_timeout(5000)
        self.execute(f"PRAGMA page_size={int(page_size)}")
        mode = self.execute("PRAGMA journal_mode=WAL")
        if mode != [("wal",)]:
            raise RuntimeError(f"cannot put {self.db_path} in WAL mode: {mode}")
        self.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE}(id INTEGER PRIMARY KEY, seq INTEGER)")
        actual = self.execute("PRAGMA page_size")[0][0]
        if actual != page_size:
            raise RuntimeError(f"page size is {actual}, wanted {page_size}")

        self.config_path.write_text(
            self._config_yaml(
                sync_interval=sync_interval,
                monitor_interval=monitor_interval,
                snapshot_interval=snapshot_interval,
                snapshot_retention=snapshot_retention,
                l0_retention=l0_retention,
                l0_retention_check_interval=l0_retention_check_interval,
                levels=levels,
                checkpoint_interval=checkpoint_interval,
                min_checkpoint_page_count=min_checkpoint_page_count,
                db_options=db_options or {},
                global_options=global_options or {},
                log_level=log_level,
            )
        )
        if start:
            self.start()

    def __repr__(self) -> str:
        return f"ReplicatedPrimary({self.db_path}, {self.replica_url})"

    def __enter__(self) -> ReplicatedPrimary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- config -----------------------------------------------------------

    def _config_yaml(
        self,
        *,
        sync_interval: Duration,
        monitor_interval: Duration | None,
        snapshot_interval: Duration | None,
        snapshot_retention: Duration | None,
        l0_retention: Duration | None,
        l0_retention_check_interval: Duration | None,
        levels: Sequence[Duration] | None,
        checkpoint_interval: Duration | None,
        min_checkpoint_page_count: int | None,
        db_options: Mapping[str, Any],
        global_options: Mapping[str, Any],
        log_level: str,
    ) -> str:
        # JSON scalars are valid YAML, so json.dumps quotes every value safely.
        q = json.dumps
        lines = [f"logging:\n  level: {q(log_level)}", "shutdown-sync-timeout: 2s"]
        if self.socket_path is not None:
            lines.append(f"socket:\n  enabled: true\n  path: {q(str(self.socket_path))}")
        if snapshot_interval is not None or snapshot_retention is not None:
            lines.append("snapshot:")
            if snapshot_interval is not None:
                lines.append(f"  interval: {q(duration(snapshot_interval))}")
            if snapshot_retention is not None:
                lines.append(f"  retention: {q(duration(snapshot_retention))}")
        if l0_retention is not None:
            lines.append(f"l0-retention: {q(duration(l0_retention))}")
        if l0_retention_check_interval is not None:
            lines.append(f"l0-retention-check-interval: {q(duration(l0_retention_check_interval))}")
        if levels is not None:
            lines.append("levels:")
            lines.extend(f"  - interval: {q(duration(v))}" for v in levels)
        lines.extend(f"{k}: {q(v)}" for k, v in global_options.items())
        lines.append("dbs:")
        lines.append(f"  - path: {q(str(self.db_path))}")
        if monitor_interval is not None:
            lines.append(f"    monitor-interval: {q(duration(monitor_interval))}")
        if checkpoint_interval is not None:
            lines.append(f"    checkpoint-interval: {q(duration(checkpoint_interval))}")
        if min_checkpoint_page_count is not None:
            lines.append(f"    min-checkpoint-page-count: {int(min_checkpoint_page_count)}")
        lines.extend(f"    {k}: {q(v)}" for k, v in db_options.items())
        lines.append("    replica:")
        if self.target is not None:
            lines.append(f"      url: {q(self.target.litestream_url)}")
            lines.extend(f"      {k}: {q(v)}" for k, v in self.target.litestream_options.items())
        else:
            lines.append(f"      url: {q(self.replica_url)}")
        lines.append(f"      sync-interval: {q(duration(sync_interval))}")
        return "\n".join(lines) + "\n"

    # -- process ----------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start `litestream replicate` (no-op when it is running)."""
        if self._closed:
            raise RuntimeError("primary is closed")
        if self.running:
            return
        if self._log_fh is None:
            self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_fh.write(f"--- start {datetime.now(timezone.utc).isoformat()}\n".encode())
        self._log_fh.flush()
        self._proc = subprocess.Popen(
            [litestream_binary(), "replicate", "-config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.workdir,
        )
        _live_processes.add(self._proc)
        log.debug("litestream pid %d replicating %s to %s", self._proc.pid, self.db_path, self.replica_url)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM litestream and wait (bounded; SIGKILL after `timeout`)."""
        if self._proc is not None:
            _terminate(self._proc, timeout)
            rc = self._proc.returncode
            self._proc = None
            log.debug("litestream stopped, rc=%s", rc)
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def close(self) -> None:
        """Stop litestream and close the primary connection. Idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            with contextlib.suppress(Exception):
                self.conn.close()
            if self.socket_path is not None:
                shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def log_text(self, tail: int | None = 60) -> str:
        """The litestream log (its last `tail` lines; None = all)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        if tail is None:
            return text
        return "\n".join(text.splitlines()[-tail:])

    def _check_alive(self) -> None:
        if self._proc is None:
            raise ReplicationError(f"litestream is not running for {self.db_path}")
        rc = self._proc.poll()
        if rc is not None:
            raise ReplicationError(
                f"litestream exited with status {rc}; log tail:\n{self.log_text()}"
            )

    # -- SQL --------------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """Run `sql` (every statement in it) and return all rows.

        apsw's execute is lazy: it stops at the first row-returning statement
        until iterated, so we always drain the cursor.
        """
        return list(self.conn.execute(sql, params if params else None))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any] | Mapping[str, Any]]) -> None:
        """Run `sql` once per parameter set, in one transaction."""
        with self.conn:
            for _ in self.conn.executemany(sql, seq):
                pass

    @contextlib.contextmanager
    def transaction(self) -> Iterator[apsw.Connection]:
        """`with p.transaction() as conn:` commits on success, rolls back on error."""
        with self.conn:
            yield self.conn

    def image(self) -> bytes:
        """The primary's logical database bytes (WAL content included).

        Equals `litestream restore` output byte for byte once the replica has
        caught up: `wait_replicated()` waits for exactly that.
        """
        data = self.conn.serialize("main")
        return bytes(data) if data is not None else b""

    # -- workload helpers -------------------------------------------------

    def create_table(self, table: str = "t") -> None:
        """`<table>(id INTEGER PRIMARY KEY, k INTEGER, v BLOB)` with an index on k."""
        self.execute(
            f"CREATE TABLE IF NOT EXISTS {table}(id INTEGER PRIMARY KEY, k INTEGER, v BLOB);"
            f"CREATE INDEX IF NOT EXISTS {table}_k ON {table}(k)"
        )

    def insert_rows(self, n: int, size: int = 100, table: str = "t", seed: int | None = None) -> None:
        """Insert `n` rows of `size` random (incompressible) bytes in one transaction."""
        self.create_table(table)
        rnd = random.Random(seed)
        self.executemany(
            f"INSERT INTO {table}(k, v) VALUES (?, ?)",
            ((rnd.randrange(1 << 30), rnd.randbytes(size)) for _ in range(n)),
        )

    def update_rows(self, where: str = "id % 3 = 0", size: int = 100, table: str = "t", seed: int | None = None) -> int:
        """Rewrite the blob of every row matching `where`; returns how many."""
        rnd = random.Random(seed)
        ids = [r[0] for r in self.execute(f"SELECT id FROM {table} WHERE {where}")]
        self.executemany(f"UPDATE {table} SET v = ? WHERE id = ?", ((rnd.randbytes(size), i) for i in ids))
        return len(ids)

    def delete_rows(self, where: str = "id % 2 = 0", table: str = "t") -> int:
        """Delete the rows matching `where`; returns how many."""
        with self.conn:
            self.execute(f"DELETE FROM {table} WHERE {where}")
            return int(self.conn.changes())

    def vacuum(self) -> None:
        """VACUUM: rewrites every page and usually shrinks the file (commit goes down)."""
        self.execute("VACUUM")

    def write_workload(
        self,
        transactions: int = 10,
        rows: int = 20,
        size: int = 200,
        table: str = "t",
        seed: int = 0,
        vacuum_every: int = 0,
    ) -> None:
        """A deterministic mix of inserts, updates and deletes, one transaction each.

        Transaction i inserts `rows` rows; every 3rd also updates a third of
        the rows, every 4th deletes some; with `vacuum_every` = k, every k-th
        ends with a VACUUM.
        """
        self.create_table(table)
        for i in range(transactions):
            s = seed * 1_000_003 + i
            self.insert_rows(rows, size, table, seed=s)
            if i % 3 == 2:
                self.update_rows(f"id % 3 = {i % 3}", size, table, seed=s)
            if i % 4 == 3:
                self.delete_rows(f"id % 7 = {i % 7}", table)
            if vacuum_every and (i + 1) % vacuum_every == 0:
                self.vacuum()

    # -- replica side -----------------------------------------------------

    def restore(
        self,
        out: str | os.PathLike[str],
        txid: int | None = None,
        timestamp: datetime | str | None = None,
        *,
        timeout: float = 30.0,
    ) -> RestoreResult:
        """`litestream restore -json -o out` of the replica; returns path and TXID."""
        out = Path(out)
        args = [litestream_binary(), "restore", "-json", "-force", "-o", str(out)]
        if txid is not None:
            args += ["-txid", f"{txid:016x}"]
        if timestamp is not None:
            if isinstance(timestamp, datetime):
                ts = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=timezone.utc)
                timestamp = ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
            args += ["-timestamp", timestamp]
        if self.target is not None:  # the replica's settings live in the config (endpoint, keys)
            args[2:2] = ["-config", str(self.config_path)]
            args.append(str(self.db_path))
        else:
            args.append(self.replica_url)
        try:
            r = subprocess.run(
                args, env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired as e:
            raise ReplicationError(f"litestream restore timed out after {timeout}s: {args}") from e
        if r.returncode != 0:
            raise ReplicationError(
                f"litestream restore failed (status {r.returncode}): {(r.stderr or r.stdout).strip()}"
            )
        try:
            info = json.loads(r.stdout[r.stdout.find("{"):])  # some backends log a line first
            got = int(info["txid"], 16)
        except (ValueError, KeyError, TypeError) as e:
            raise ReplicationError(f"unexpected litestream restore output: {r.stdout!r}") from e
        return RestoreResult(out, got)

    def litestream_restore(
        self,
        out: str | os.PathLike[str],
        txid: int | None = None,
        timestamp: datetime | str | None = None,
    ) -> Path:
        """Restore the replica (latest, or as of `txid`/`timestamp`) to `out`."""
        return self.restore(out, txid, timestamp).path

    def wait_replicated(self, timeout: float | None = None, *, exact: bool = True) -> int:
        """Block until everything committed so far is in the replica; return its TXID.

        Commits a bump of the marker row in its own transaction, then restores
        the replica every ~50 ms until the restored database holds that marker
        value. The marker commit comes after every earlier commit in the WAL,
        so seeing it proves they are all replicated. Each try lists the
        replica, takes the newest TXID the files reach, and restores exactly
        that TXID with `litestream restore -txid`: the returned TXID names
        exactly the state that was checked. (The TXID `restore -json` prints
        for a latest restore can lag the bytes it wrote, seen on S3 under load.)

        With `exact` (default) it also waits until the restored bytes equal
        `image()`, which absorbs litestream's own writes to `_litestream_seq`
        (it writes there around checkpoints); after it returns,
        `image()` == restore as of the returned TXID. Pass exact=False when
        another thread keeps writing to the primary.

        Without a `timeout`, the budget grows with the replica: 30 s plus
        `RESTORE_SECONDS_PER_FILE` per file listed, so a long run's history
        (thousands of L0 files) gets a budget its restore can meet.
        """
        self._check_alive()
        self._marker_seq += 1
        seq = self._marker_seq
        with self.conn:
            self.execute(
                f"INSERT INTO {MARKER_TABLE}(id, seq) VALUES (1, ?) "
                "ON CONFLICT(id) DO UPDATE SET seq = excluded.seq",
                (seq,),
            )
        self._restore_n += 1
        out = self._restore_dir / f"wait-{self._restore_n}.db"
        started = time.monotonic()
        deadline = started + (timeout if timeout is not None else 30.0)
        last = "no restore yet"
        tries = 0
        try:
            while True:
                tries += 1
                self._check_alive()
                try:
                    end = self._newest_txid()
                    if timeout is None:
                        deadline = max(deadline, started + 30.0 + RESTORE_SECONDS_PER_FILE * self.files_listed)
                    res = self.restore(out, txid=end, timeout=max(1.0, deadline - time.monotonic()))
                    data = out.read_bytes()
                    seen = _marker_of(data)
                    if seen >= seq:
                        if not exact:
                            self.last_txid = res.txid
                            return res.txid
                        img = self.image()
                        if data == img:
                            self.last_txid = res.txid
                            log.debug("replicated at txid %d after %d tries", res.txid, tries)
                            return res.txid
                        last = f"txid {res.txid:x}: marker seen but {len(data)} restored bytes != {len(img)} image bytes"
                    else:
                        last = f"txid {res.txid:x}: marker {seen}, want {seq}"
                except ReplicationError as e:  # e.g. "no matching backup files" before the first sync
                    last = str(e)
                if time.monotonic() > deadline:
                    raise ReplicationError(
                        f"replica {self.replica_url} did not catch up within {deadline - started:.1f}s "
                        f"({tries} tries; last: {last}); litestream log tail:\n{self.log_text()}"
                    )
                time.sleep(0.05)
        finally:
            for p in (out, out.with_name(out.name + "-wal"), out.with_name(out.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def write_until_snapshot(self, rows: int, size: int, timeout: float = 20.0) -> int:
        """Insert and replicate batches until litestream has written a snapshot
        (L9); returns how many batches that took (their seeds are 1..n)."""
        from lsvfs.storage.base import SNAPSHOT_LEVEL

        deadline = time.monotonic() + timeout
        n = 0
        while not self.replica_files()[SNAPSHOT_LEVEL]:
            if time.monotonic() > deadline:
                raise ReplicationError(f"litestream wrote no snapshot within {timeout}s")
            n += 1
            self.insert_rows(rows, size, seed=n)
            self.wait_replicated()
            time.sleep(0.1)
        return n

    def _newest_txid(self) -> int | None:
        """The TXID the replica's files reach now (None before the first file)."""
        from lsvfs.errors import ReplicaError
        from lsvfs.plan import build

        files = [f for fs in self.replica_files().values() for f in fs]
        self.files_listed = len(files)
        try:
            return build(files)[-1].max_txid if files else None
        except ReplicaError as e:  # a gap while litestream compacts: try again
            raise ReplicationError(str(e)) from e

    def newest_listed(self) -> int:
        """The highest TXID any file of the replica reaches now (0 before the first file)."""
        return max((f.max_txid for fs in self.replica_files().values() for f in fs), default=0)

    def open_storage(self) -> Any:
        """An lsvfs storage client for this replica (caller closes it)."""
        from lsvfs.storage import open_storage
        from lsvfs.storage.file import FileStorage
        from lsvfs.storage.s3 import S3Storage

        if self.target is not None:
            return open_storage(self.replica_url)
        if self.replica_dir is not None:
            return FileStorage(self.replica_dir)
        assert self.s3 is not None and self.bucket is not None
        return S3Storage(
            self.bucket,
            self.s3_path,
            endpoint=self.s3.endpoint,
            region=TEST_REGION,
            force_path_style=True,
            access_key_id=TEST_ACCESS_KEY_ID,
            secret_access_key=TEST_SECRET_ACCESS_KEY,
        )

    def replica_files(self) -> dict[int, list[Any]]:
        """Every level's FileInfo list, from lsvfs's own storage layer."""
        from lsvfs.storage.base import LEVELS

        st = self.open_storage()
        try:
            return {lvl: st.list_files(lvl) for lvl in LEVELS}
        finally:
            st.close()


def _marker_of(db: bytes) -> int:
    """The marker seq in a database image (0 if absent), read from memory."""
    if not db:
        return 0
    if len(db) >= 20 and db[18:20] == b"\x02\x02":
        # An in-memory database cannot be in WAL mode: present it as rollback.
        db = db[:18] + b"\x01\x01" + db[20:]
    c = apsw.Connection(":memory:")
    try:
        c.deserialize("main", db)
        rows = list(c.execute(f"SELECT seq FROM {MARKER_TABLE} WHERE id = 1"))
    except apsw.SQLError:
        return 0
    finally:
        c.close()
    return int(rows[0][0]) if rows else 0


def wait_until(predicate: Any, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll `predicate()` until truthy (returned) or raise ReplicationError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise ReplicationError(f"{what} not reached within {timeout}s")
        time.sleep(interval)
