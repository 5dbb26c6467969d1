"""Storage clients against real directories and the real moto S3 server."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from replication import AuthMotoS3, MotoS3, free_port, litestream_binary, litestream_env
from synthetic import S3Target, SyntheticPrimary

import lsvfs
from lsvfs.errors import MissingFileError, StorageError, URLError
from lsvfs.registry import open_replicas, storage_clients
from lsvfs.storage import (
    LEVELS,
    SNAPSHOT_LEVEL,
    FileInfo,
    SharedClients,
    StorageClient,
    format_filename,
    open_storage,
    parse_filename,
    parse_url,
    s3,
)
from lsvfs.storage.file import FileStorage
from lsvfs.storage.s3 import S3Storage, litestream_credentials


def blob(lo: int, hi: int, size: int) -> bytes:
    """Distinct deterministic content per file, so a read from the wrong file shows."""
    return random.Random(lo * 1_000_003 + hi).randbytes(size)


def put_file(root: Path, level: int, lo: int, hi: int, size: int = 300) -> bytes:
    d = root / "ltx" / str(level)
    d.mkdir(parents=True, exist_ok=True)
    data = blob(lo, hi, size)
    (d / format_filename(lo, hi)).write_bytes(data)
    return data


# ---------------------------------------------------------------------------
# directory replicas


def test_file_listing_by_level_sorted(tmp_path: Path) -> None:
    for lo, hi in [(5, 5), (3, 3), (4, 4), (10, 10)]:
        put_file(tmp_path, 0, lo, hi, size=100 + lo)
    put_file(tmp_path, 1, 1, 4)
    put_file(tmp_path, 1, 5, 8)
    put_file(tmp_path, SNAPSHOT_LEVEL, 1, 8, size=999)
    st = FileStorage(tmp_path)
    l0 = st.list_files(0)
    assert [(f.min_txid, f.max_txid) for f in l0] == [(3, 3), (4, 4), (5, 5), (10, 10)]
    assert [f.size for f in l0] == [103, 104, 105, 110]
    assert all(f.level == 0 and isinstance(f.modified, datetime) for f in l0)
    assert [(f.min_txid, f.max_txid) for f in st.list_files(1)] == [(1, 4), (5, 8)]
    assert st.list_files(9) == [FileInfo(9, 1, 8, 999, st.list_files(9)[0].modified)]
    assert st.list_files(2) == []  # missing level dir = no files
    assert l0[0].name == "L0/0000000000000003-0000000000000003.ltx"
    assert isinstance(st, StorageClient)
    st.close()


def test_file_missing_root_is_empty(tmp_path: Path) -> None:
    st = FileStorage(tmp_path / "not-there")
    assert all(st.list_files(lvl) == [] for lvl in LEVELS)


def test_file_list_from_txid(tmp_path: Path) -> None:
    for lo in range(1, 21):
        put_file(tmp_path, 0, lo, lo)
    put_file(tmp_path, 1, 1, 10)
    put_file(tmp_path, 1, 11, 20)
    st = FileStorage(tmp_path)
    assert [f.min_txid for f in st.list_files(0, 15)] == [15, 16, 17, 18, 19, 20]
    assert st.list_files(0, 21) == []
    assert [f.min_txid for f in st.list_files(0, 0)] == list(range(1, 21))
    assert [(f.min_txid, f.max_txid) for f in st.list_files(1, 5)] == [(11, 20)]


def test_file_ignores_non_ltx_names(tmp_path: Path) -> None:
    put_file(tmp_path, 0, 1, 1)
    d = tmp_path / "ltx" / "0"
    for junk in [
        "0000000000000002-0000000000000002.ltx.tmp",  # litestream's in-progress upload
        ".0000000000000003-0000000000000003.ltx",
        "0000000000000004-0000000000000004.LTX",
        "000000000000000A-000000000000000A.ltx",  # upper-case hex is not litestream's
        "0000000000000000-0000000000000001.ltx",  # TXID 0 is invalid
        "0000000000000009-0000000000000008.ltx",  # max < min
        "notes.txt",
    ]:
        (d / junk).write_bytes(b"x")
    (d / "0000000000000005-0000000000000005.ltx").mkdir()  # a directory, not a file
    assert [(f.min_txid, f.max_txid) for f in FileStorage(tmp_path).list_files(0)] == [(1, 1)]


def test_file_level_out_of_range(tmp_path: Path) -> None:
    st = FileStorage(tmp_path)
    for bad in (-1, 10, True):
        with pytest.raises(ValueError):
            st.list_files(bad)


def test_file_ranged_reads_exact(tmp_path: Path) -> None:
    data = put_file(tmp_path, 0, 7, 9, size=10_000)
    st = FileStorage(tmp_path)
    (f,) = st.list_files(0)
    for off, n in [(0, 100), (100, 1), (9_999, 1), (0, 10_000), (4_096, 4_096), (123, 0)]:
        assert st.read(f, off, n) == data[off : off + n]
    assert st.read_all(f) == data
    st.close()


def test_file_short_read_names_file(tmp_path: Path) -> None:
    put_file(tmp_path, 0, 7, 9, size=1000)
    st = FileStorage(tmp_path)
    (f,) = st.list_files(0)
    with pytest.raises(StorageError, match=r"0000000000000007-0000000000000009\.ltx.*smaller than expected"):
        st.read(f, 900, 101)
    with pytest.raises(StorageError, match="smaller than expected"):
        st.read(f, 5000, 10)
    # read_all trusts only the listed size: a file that changed size is an error.
    with pytest.raises(StorageError, match="is 1000 bytes, expected 2000"):
        st.read_all(FileInfo(0, 7, 9, 2000))
    with pytest.raises(ValueError):
        st.read(f, -1, 10)


def test_file_missing_file_names_it(tmp_path: Path) -> None:
    st = FileStorage(tmp_path)
    info = FileInfo(0, 0x42, 0x43, 10)
    with pytest.raises(MissingFileError, match=r"L0/0000000000000042-0000000000000043\.ltx.*not found") as ei:
        st.read(info, 0, 10)
    assert isinstance(ei.value, StorageError)
    with pytest.raises(StorageError, match="0000000000000042-0000000000000043"):
        st.read_all(info)


def test_file_open_handle_survives_deletion(tmp_path: Path) -> None:
    """Retention may delete a file a reader already opened; its bytes stay readable."""
    data = put_file(tmp_path, 0, 3, 3, size=500)
    st = FileStorage(tmp_path)
    (f,) = st.list_files(0)
    assert st.read(f, 0, 10) == data[:10]
    (tmp_path / "ltx" / "0" / format_filename(3, 3)).unlink()
    assert st.read(f, 10, 20) == data[10:30]
    st.close()
    with pytest.raises(StorageError, match="closed"):
        st.read(f, 0, 1)


def test_file_bounded_fds_under_threads(tmp_path: Path) -> None:
    files = {lo: put_file(tmp_path, 0, lo, lo, size=2000 + lo) for lo in range(1, 41)}
    st = FileStorage(tmp_path, max_open=4)
    infos = st.list_files(0)
    errors: list[BaseException] = []

    def open_here() -> list[str]:
        """Descriptors of this process that point into tmp_path (Linux only)."""
        out = []
        for fd in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue
            if target.startswith(str(tmp_path)):
                out.append(target)
        return out

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(300):
                f = rnd.choice(infos)
                off = rnd.randrange(f.size)
                n = rnd.randrange(1, f.size - off + 1)
                assert st.read(f, off, n) == files[f.min_txid][off : off + n]
                assert st.open_handles() <= 4
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    assert st.open_handles() <= 4
    assert 1 <= len(open_here()) <= 4
    st.close()
    assert st.open_handles() == 0
    assert open_here() == []  # nothing leaked


# ---------------------------------------------------------------------------
# URL parsing


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("file:///abs/replica", "/abs/replica"),
        ("file://localhost/abs/replica", "/abs/replica"),
        ("file:/abs/replica", "/abs/replica"),
        ("file:///abs/with%20space/", "/abs/with space"),
        ("/abs/replica", "/abs/replica"),
        ("/abs/./x/../replica", "/abs/replica"),
    ],
)
def test_parse_file_urls(url: str, path: str) -> None:
    u = parse_url(url)
    assert (u.scheme, u.path, u.bucket) == ("file", path, None)


def test_parse_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_url("rel/replica").path == str(tmp_path / "rel" / "replica")
    assert parse_url("dir:with:colons").path == str(tmp_path / "dir:with:colons")
    assert parse_url(Path("x")).path == str(tmp_path / "x")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert parse_url("~/r").path == str(tmp_path / "home" / "r")
    st = open_storage("rel/replica")
    assert isinstance(st, FileStorage) and st.root == tmp_path / "rel" / "replica"
    assert st.url == (tmp_path / "rel" / "replica").as_uri()


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        ("s3://bkt", dict(bucket="bkt", path="", endpoint=None, region=None, force_path_style=None)),
        ("s3://bkt/", dict(bucket="bkt", path="")),
        ("s3://bkt/a/b/", dict(bucket="bkt", path="a/b")),
        (
            "s3://bkt/db?endpoint=http://127.0.0.1:9000&region=us-east-1&force-path-style=true",
            dict(bucket="bkt", path="db", endpoint="http://127.0.0.1:9000", region="us-east-1", force_path_style=True),
        ),
        ("s3://bkt/db?forcePathStyle=false", dict(force_path_style=False)),
        ("s3://bkt/db?skip-verify=true", dict(skip_verify=True)),
        ("s3://bkt/db?skipVerify=false", dict(skip_verify=False)),
        ("s3://bkt/db?endpoint=localhost:9000", dict(endpoint="http://localhost:9000")),
        ("s3://bkt/db?endpoint=minio.example.com", dict(endpoint="https://minio.example.com")),
        ("s3://bkt/db?sign-payload=false", dict(bucket="bkt")),
        ("s3://my.bucket.s3.eu-west-1.amazonaws.com/x", dict(bucket="my.bucket", region="eu-west-1", path="x")),
        ("s3://bkt.s3.amazonaws.com/x", dict(bucket="bkt", region=None)),
        ("S3://bkt/x", dict(bucket="bkt", path="x")),
    ],
)
def test_parse_s3_urls(url: str, expect: dict[str, Any]) -> None:
    u = parse_url(url)
    assert u.scheme == "s3"
    for k, v in expect.items():
        assert getattr(u, k) == v, k


@pytest.mark.parametrize("url", ["http://example.com/db", "ftp://h/x", "redis://h/b"])
def test_unsupported_scheme_names_supported_ones(url: str) -> None:
    with pytest.raises(URLError) as ei:
        parse_url(url)
    msg = str(ei.value)
    assert "file://" in msg and "s3://" in msg and "plain" in msg
    for scheme in ("gs://", "abs://", "sftp://", "webdav", "nats://", "oss://"):
        assert scheme in msg
    assert url.split(":")[0] in msg
    with pytest.raises(ValueError):  # URLError is a ValueError too
        open_storage(url)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("file://host/path", "host"),
        ("file:relative", "absolute"),
        ("file:///x?a=b", "query"),
        ("s3://", "no bucket"),
        ("s3:bkt/x", "malformed"),
        ("s3://bkt/x?endpiont=http://x", "unknown S3 URL parameter 'endpiont'"),
        ("s3://bkt/x?force-path-style=maybe", "true or false"),
        ("s3://key:secret@bkt/x", "credentials"),
        ("s3://b/x", "invalid bucket"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(URLError, match=match):
        parse_url(url)


def test_open_storage_s3_config(s3_env: None) -> None:
    st = open_storage("s3://bkt/some/db?endpoint=http://127.0.0.1:1&region=eu-central-1")
    assert isinstance(st, S3Storage) and isinstance(st, StorageClient)
    assert (st.bucket, st.path, st.region) == ("bkt", "some/db", "eu-central-1")
    cfg = st._client.config
    assert cfg.path_style  # endpoint given => path style, like litestream
    assert (cfg.connect_timeout, cfg.read_timeout, cfg.max_pool_connections) == (5.0, 30.0, 64)
    assert cfg.max_attempts == 3
    assert st.level_prefix(0) == "some/db/0000/" and st.level_prefix(9) == "some/db/0009/"
    assert st.key_of(FileInfo(9, 1, 0xAB, 1)) == "some/db/0009/0000000000000001-00000000000000ab.ltx"
    assert S3Storage("bkt", "").level_prefix(3) == "0003/"  # empty path: no leading slash
    assert parse_url(st.url) == parse_url("s3://bkt/some/db?endpoint=http://127.0.0.1:1&region=eu-central-1")
    aws = open_storage("s3://bkt/db")
    assert isinstance(aws, S3Storage) and not aws._client.config.path_style
    assert aws.region == "us-east-1"  # from AWS_DEFAULT_REGION


def test_filename_roundtrip() -> None:
    assert parse_filename(format_filename(1, 0xFFFF)) == (1, 0xFFFF)


# ---------------------------------------------------------------------------
# S3 replicas (moto)


class S3Fixture:
    def __init__(self, moto: MotoS3, bucket: str, path: str = "db") -> None:
        self.moto = moto
        self.bucket = bucket
        self.path = path
        self.client = moto.client()

    def key(self, level: int, lo: int, hi: int) -> str:
        p = f"{self.path}/" if self.path else ""
        return f"{p}{level:04x}/{format_filename(lo, hi)}"

    def put(self, level: int, lo: int, hi: int, size: int = 300) -> bytes:
        data = blob(lo, hi, size)
        self.client.put_object(Bucket=self.bucket, Key=self.key(level, lo, hi), Body=data)
        return data

    def storage(self, **kw: Any) -> S3Storage:
        return S3Storage(self.bucket, self.path, endpoint=self.moto.endpoint, region="us-east-1", **kw)


@pytest.fixture
def s3fx(moto_s3: MotoS3, s3_bucket: str) -> S3Fixture:
    return S3Fixture(moto_s3, s3_bucket)


def spy_lists(st: S3Storage, seen: list[Any]) -> None:
    """Record the parameters of every LIST page `st` asks for (S3's names)."""
    real = st._client.list_objects

    def spy(bucket: str, prefix: str, **kw: Any) -> Any:
        names = {"start_after": "StartAfter", "continuation_token": "ContinuationToken", "max_keys": "MaxKeys"}
        seen.append({"Bucket": bucket, "Prefix": prefix, **{names[k]: v for k, v in kw.items() if v and k in names}})
        return real(bucket, prefix, **kw)

    st._client.list_objects = spy  # type: ignore[method-assign]


@pytest.mark.s3
def test_s3_listing_levels_and_names(s3fx: S3Fixture) -> None:
    for lo in (4, 2, 3):
        s3fx.put(0, lo, lo, size=50 + lo)
    s3fx.put(1, 1, 3)
    s3fx.put(9, 1, 4, size=777)
    for junk in ["db/0000/notes.txt", "db/0000/0000000000000005-0000000000000005.ltx.tmp",
                 "db/0000/sub/0000000000000006-0000000000000006.ltx", "db/0000000000000007-0000000000000007.ltx",
                 "db/0010/0000000000000001-0000000000000001.ltx", "other/0000/0000000000000001-0000000000000001.ltx"]:
        s3fx.client.put_object(Bucket=s3fx.bucket, Key=junk, Body=b"x")
    st = s3fx.storage()
    l0 = st.list_files(0)
    assert [(f.min_txid, f.max_txid, f.size) for f in l0] == [(2, 2, 52), (3, 3, 53), (4, 4, 54)]
    assert all(isinstance(f.modified, datetime) for f in l0)
    assert [(f.level, f.min_txid, f.max_txid) for f in st.list_files(1)] == [(1, 1, 3)]
    assert [(f.level, f.size) for f in st.list_files(9)] == [(9, 777)]
    assert st.list_files(5) == []
    # Every level in one LIST: the same files, the same junk skipped.
    seen: list[dict[str, Any]] = []
    spy_lists(st, seen)
    every = st.list_every_level()
    assert every == [f for lvl in LEVELS for f in st.list_files(lvl)]
    assert seen[0]["Prefix"] == "db/" and len(seen) == 1 + len(LEVELS)
    assert [f.min_txid for f in st.list_every_level(3)] == [3, 4]
    st.close()


@pytest.mark.s3
def test_s3_replica_opens_with_one_list(s3fx: S3Fixture) -> None:
    """Opening an S3 replica lists it once, not once per level."""
    p = SyntheticPrimary(S3Target(s3fx.moto, s3fx.bucket, "one-list"), page_size=1024)
    p.commit("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
    with closing(lsvfs.connect(p.url, poll_interval=0, prefetch="off")) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
        assert open_replicas()[p.url].stats()["storage"]["list"]["requests"] == 1


@pytest.mark.s3
def test_s3_empty_path(moto_s3: MotoS3, s3_bucket: str) -> None:
    fx = S3Fixture(moto_s3, s3_bucket, path="")
    data = fx.put(0, 1, 1)
    assert fx.key(0, 1, 1) == "0000/0000000000000001-0000000000000001.ltx"
    st = open_storage(f"s3://{s3_bucket}?endpoint={moto_s3.endpoint}&region=us-east-1&force-path-style=true")
    (f,) = st.list_files(0)
    assert st.read_all(f) == data


@pytest.mark.s3
def test_s3_list_from_txid_uses_start_after(s3fx: S3Fixture) -> None:
    for lo in range(1, 13):
        s3fx.put(0, lo, lo + (5 if lo == 9 else 0), size=10)
    st = s3fx.storage()
    seen: list[dict[str, Any]] = []
    spy_lists(st, seen)
    got = st.list_files(0, 10)
    assert [(f.min_txid, f.max_txid) for f in got] == [(10, 10), (11, 11), (12, 12)]
    # Everything up to and including "<min_txid-1>-ffff…" is skipped by the server.
    assert seen[-1]["StartAfter"] == "db/0000/0000000000000009-ffffffffffffffff.ltx"
    assert seen[-1]["Prefix"] == "db/0000/"
    assert [f.min_txid for f in st.list_files(0, 9)] == [9, 10, 11, 12]  # 9-e included
    assert [f.min_txid for f in st.list_files(0, 1)] == list(range(1, 13))
    assert "StartAfter" not in seen[-1]
    assert st.list_files(0, 13) == []


@pytest.mark.s3
def test_s3_pagination_small_pages(s3fx: S3Fixture) -> None:
    for lo in range(1, 24):
        s3fx.put(0, lo, lo, size=1)
    st = s3fx.storage(page_size=5)
    calls: list[int] = []
    spy_lists(st, calls)
    assert [f.min_txid for f in st.list_files(0)] == list(range(1, 24))
    assert len(calls) == 5
    calls.clear()
    assert [f.min_txid for f in st.list_files(0, 12)] == list(range(12, 24))
    assert len(calls) == 3


@pytest.mark.s3
def test_s3_pagination_over_1000_objects(s3fx: S3Fixture) -> None:
    """More than one default-size (1000 key) page; moto truncates at 1000 like S3."""
    n = 1234
    t0 = time.monotonic()
    s3fx.moto.bulk_put(s3fx.bucket, ((s3fx.key(0, lo, lo), b"") for lo in range(1, n + 1)))
    st = s3fx.storage()
    calls: list[int] = []
    spy_lists(st, calls)
    files = st.list_files(0)
    assert [f.min_txid for f in files] == list(range(1, n + 1))
    assert len(calls) == 2
    assert [f.min_txid for f in st.list_files(0, 1200)] == list(range(1200, n + 1))
    assert time.monotonic() - t0 < 30


@pytest.mark.s3
def test_s3_ranged_reads_exact(s3fx: S3Fixture) -> None:
    data = s3fx.put(0, 5, 6, size=10_000)
    st = s3fx.storage()
    (f,) = st.list_files(0)
    assert f.size == 10_000
    for off, n in [(0, 100), (100, 1), (9_999, 1), (0, 10_000), (4_096, 4_096), (7, 0)]:
        assert st.read(f, off, n) == data[off : off + n]
    assert st.read_all(f) == data
    with pytest.raises(StorageError, match=r"db/0000/0000000000000005-0000000000000006\.ltx.*smaller than expected"):
        st.read(f, 9_990, 20)
    with pytest.raises(StorageError, match=r"0000000000000005-0000000000000006\.ltx.*InvalidRange"):
        st.read(f, 20_000, 10)
    with pytest.raises(StorageError, match="is 10000 bytes, expected 10001"):
        st.read_all(FileInfo(0, 5, 6, 10_001))


@pytest.mark.s3
def test_s3_missing_key_names_it(s3fx: S3Fixture) -> None:
    st = s3fx.storage()
    info = FileInfo(1, 0x10, 0x20, 100)
    with pytest.raises(MissingFileError, match=rf"s3://{s3fx.bucket}/db/0001/0000000000000010-0000000000000020\.ltx.*NoSuchKey"):
        st.read(info, 0, 10)
    with pytest.raises(MissingFileError, match="NoSuchKey"):
        st.read_all(info)


@pytest.mark.s3
def test_s3_concurrent_reads(s3fx: S3Fixture) -> None:
    datas = {lo: s3fx.put(0, lo, lo, size=5000) for lo in range(1, 9)}
    st = s3fx.storage()
    infos = st.list_files(0)

    def job(i: int) -> bool:
        rnd = random.Random(i)
        f = rnd.choice(infos)
        off = rnd.randrange(4000)
        return st.read(f, off, 1000) == datas[f.min_txid][off : off + 1000]

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(job, range(200)))


@pytest.mark.s3
def test_s3_bad_bucket(moto_s3: MotoS3, s3_env: None) -> None:
    st = open_storage(moto_s3.url("no-such-bucket-here", "db"))
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-here/db/0000/.*NoSuchBucket.*does not exist"):
        st.list_files(0)
    with pytest.raises(StorageError, match=r"no-such-bucket-here.*NoSuchBucket"):
        st.read(FileInfo(0, 1, 1, 10), 0, 10)


@pytest.mark.s3
def test_s3_unreachable_endpoint(s3_env: None) -> None:
    port = free_port()  # nothing listens there: connection refused
    t0 = time.monotonic()
    st = open_storage(f"s3://bkt/db?endpoint=http://127.0.0.1:{port}&region=us-east-1")
    with pytest.raises(StorageError, match=rf"s3://bkt/db/0000/.*endpoint unreachable.*127\.0\.0\.1:{port}"):
        st.list_files(0)
    with pytest.raises(StorageError, match="endpoint unreachable"):
        S3Storage("bkt", "db", endpoint=f"http://127.0.0.1:{port}", max_attempts=1).read(FileInfo(0, 1, 1, 5), 0, 5)
    assert time.monotonic() - t0 < 10  # retries are few and quick


@pytest.mark.s3
def test_s3_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, moto_s3: MotoS3) -> None:
    for var in list(os.environ):
        if var.startswith(("AWS_", "LITESTREAM_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    st = open_storage(moto_s3.url("bkt", "db"))
    with pytest.raises(StorageError, match="no usable AWS credentials.*LITESTREAM_ACCESS_KEY_ID"):
        st.list_files(0)


# -- credentials, against a moto that checks them ------------------------------


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> None:
    for var in list(os.environ):
        if var.startswith(("AWS_", "LITESTREAM_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _litestream_auth_ok(url: str, tmp_path: Path) -> bool:
    """Does the real litestream, in this process's environment, get past auth?"""
    env = {k: v for k, v in litestream_env().items() if not k.startswith("AWS_")}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("AWS_", "LITESTREAM_"))})
    env.pop("AWS_CA_BUNDLE", None)
    r = subprocess.run([litestream_binary(), "restore", "-o", str(tmp_path / "out.db"), url],
                       env=env, capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert "no matching backup files" in out or "InvalidAccessKeyId" in out or "SignatureDoesNotMatch" in out, out
    return "no matching backup files" in out


@pytest.mark.s3
def test_s3_bad_credentials(moto_s3_auth: AuthMotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _clean_env(monkeypatch, tmp_path, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="nope")
    st = open_storage(moto_s3_auth.url())
    with pytest.raises(StorageError, match=rf"s3://{moto_s3_auth.bucket}/db/0000/.*InvalidAccessKeyId.*AWS_ACCESS_KEY_ID"):
        st.list_files(0)
    bad_secret = S3Storage(moto_s3_auth.bucket, "db", endpoint=moto_s3_auth.endpoint,
                           access_key_id=moto_s3_auth.access_key_id, secret_access_key="wrong")
    with pytest.raises(StorageError, match="SignatureDoesNotMatch.*secret"):
        bad_secret.read(FileInfo(0, 1, 1, 5), 0, 5)
    good = S3Storage(moto_s3_auth.bucket, "db", endpoint=moto_s3_auth.endpoint,
                     access_key_id=moto_s3_auth.access_key_id, secret_access_key=moto_s3_auth.secret_access_key)
    assert good.list_files(0) == []


@pytest.mark.s3
def test_litestream_access_key_env_honoured(moto_s3_auth: AuthMotoS3, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    good = {"LITESTREAM_ACCESS_KEY_ID": moto_s3_auth.access_key_id,
            "LITESTREAM_SECRET_ACCESS_KEY": moto_s3_auth.secret_access_key}
    moto_s3_auth.client().put_object(Bucket=moto_s3_auth.bucket, Key="lit/0000/0000000000000001-0000000000000001.ltx",
                                     Body=b"hello")
    url = moto_s3_auth.url("lit")

    # Only LITESTREAM_* set: they are the credentials (lsvfs and litestream agree).
    _clean_env(monkeypatch, tmp_path, **good)
    st = open_storage(url)
    (f,) = st.list_files(0)
    assert st.read_all(f) == b"hello"
    assert _litestream_auth_ok(moto_s3_auth.url("empty"), tmp_path)

    # Both set: litestream 0.5.17 keeps AWS_* and uses LITESTREAM_* only to fill
    # a missing AWS_* variable; lsvfs does the same so both see one identity.
    _clean_env(monkeypatch, tmp_path, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG1", AWS_SECRET_ACCESS_KEY="nope", **good)
    with pytest.raises(StorageError, match="InvalidAccessKeyId"):
        open_storage(url).list_files(0)
    assert not _litestream_auth_ok(moto_s3_auth.url("empty"), tmp_path)

    # Mixed: AWS key id present, secret only from LITESTREAM_*.
    _clean_env(monkeypatch, tmp_path, AWS_ACCESS_KEY_ID=moto_s3_auth.access_key_id,
               LITESTREAM_SECRET_ACCESS_KEY=moto_s3_auth.secret_access_key)
    assert [x.min_txid for x in open_storage(url).list_files(0)] == [1]
    assert litestream_credentials() == (moto_s3_auth.access_key_id, moto_s3_auth.secret_access_key)

    _clean_env(monkeypatch, tmp_path, LITESTREAM_ACCESS_KEY_ID="only-the-id")
    with pytest.raises(StorageError, match="incomplete S3 credentials"):
        open_storage(url)


# -- one client per endpoint ----------------------------------------------------


def test_shared_s3_clients_are_keyed_by_endpoint_region_and_credentials(
        s3_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Storages of any bucket and path share one boto3 client per endpoint,
    region and credentials; a different one of those gets its own client, and
    so does a storage opened without the shared registry. The last close
    closes it; closing one storage twice lets go of it once."""
    clients = SharedClients()
    url = "s3://bkt/{}?endpoint=http://127.0.0.1:1&region=eu-central-1"
    a, b = open_storage(url.format("a"), clients), open_storage(url.format("b/c"), clients)
    bucket = open_storage("s3://other/x?endpoint=http://127.0.0.1:1&region=eu-central-1", clients)
    assert isinstance(a, S3Storage) and isinstance(b, S3Storage) and isinstance(bucket, S3Storage)
    assert a._client is b._client is bucket._client and len(clients) == 1
    region = open_storage("s3://bkt/a?endpoint=http://127.0.0.1:1&region=us-west-2", clients)
    endpoint = open_storage("s3://bkt/a?endpoint=http://127.0.0.1:2&region=eu-central-1", clients)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another secret")
    creds = open_storage(url.format("a"), clients)
    private = open_storage(url.format("a"))
    distinct = (a, region, endpoint, creds, private)
    assert len({id(s._client) for s in distinct}) == 5 and len(clients) == 4  # type: ignore[attr-defined]
    a.close()
    a.close()
    assert len(clients) == 4, "b and the other bucket still hold the first client"
    for st in (b, bucket, region, endpoint, creds, private):
        st.close()
    assert len(clients) == 0


@pytest.mark.s3
def test_replicas_on_one_endpoint_share_one_s3_client(moto_s3: MotoS3, s3_bucket: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas in one bucket (different paths) read through one boto3
    client; it stays open while either replica is, is closed with the last,
    and the URL reopened afterwards gets a fresh client that works. A storage
    passed in by the caller is its own and never enters the registry."""
    closed: list[Any] = []
    real_close = s3._close_client

    def spy(client: Any) -> None:
        closed.append(client)
        real_close(client)

    monkeypatch.setattr(s3, "_close_client", spy)
    a, b = (SyntheticPrimary(S3Target(moto_s3, s3_bucket, path)) for path in ("a", "b"))
    for name, p in (("a", a), ("b", b)):
        p.commit("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        p.commit("INSERT INTO t(v) VALUES (?)", (f"from {name}",))
    assert not [u for u in open_replicas() if moto_s3.endpoint in u], "another test left a replica open here"
    shared = storage_clients()
    before = len(shared)

    def client_of(url: str) -> Any:
        return open_replicas()[url].storage.inner._client  # type: ignore[attr-defined]

    ca = lsvfs.connect(a.url, poll_interval=0, cache_size=0)
    cb = lsvfs.connect(b.url, poll_interval=0, cache_size=0)
    client = client_of(a.url)
    assert client_of(b.url) is client and len(shared) == before + 1
    ca.close()
    assert a.url not in open_replicas() and closed == []
    rb = open_replicas()[b.url]
    reads = rb.storage.counts()["ranged_read"]["requests"]
    assert cb.execute("SELECT v FROM t").fetchall() == [("from b",)]
    assert rb.storage.counts()["ranged_read"]["requests"] > reads, "no page cache: read through the client"
    cb.close()
    assert closed == [client] and len(shared) == before
    with closing(lsvfs.connect(a.url, poll_interval=0)) as again:
        assert again.execute("SELECT v FROM t").fetchall() == [("from a",)]
        assert client_of(a.url) is not client and len(shared) == before + 1
    mine = open_storage(b.url)
    with closing(lsvfs.connect(b.url, storage=mine, poll_interval=0)) as c:
        assert c.execute("SELECT v FROM t").fetchall() == [("from b",)]
        assert len(shared) == before and open_replicas()[b.url].storage.inner is mine
    assert closed[-1] is mine._client  # type: ignore[attr-defined]
