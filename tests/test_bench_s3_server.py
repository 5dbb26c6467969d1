"""bench/s3_server.py answers like moto for the same objects (through boto3 and through lsvfs)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from replication import MotoS3

from lsvfs.errors import MissingFileError, StorageError
from lsvfs.storage import FileInfo, open_storage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from s3_server import S3Server  # noqa: E402

KEYS = [f"db/0000/{i:016x}-{i:016x}.ltx" for i in range(1, 24)] + [
    "db/0009/0000000000000001-0000000000000017.ltx", "db/0001/0000000000000001-0000000000000004.ltx",
    "db/notes/with space+plus&amp.txt", "dbx/other", "top"]


def body(key: str) -> bytes:
    return (key.encode() * 97)[: 100 + len(key) * 7]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3) -> Iterator[tuple[Any, Any, str]]:
    """(boto3 client on moto, boto3 client on the bench server, bucket), holding KEYS."""
    import boto3
    from botocore.config import Config

    root = tmp_path_factory.mktemp("bench-s3")
    bucket = moto_s3.create_bucket("same")
    moto_s3.bulk_put(bucket, [(k, body(k)) for k in KEYS])
    for k in KEYS:
        p = root / bucket / k
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body(k))
    server = S3Server(root)

    def client(endpoint: str) -> Any:
        return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                            aws_secret_access_key="test", config=Config(s3={"addressing_style": "path"},
                                                                        retries={"max_attempts": 1}))

    try:
        yield client(moto_s3.endpoint), client(server.endpoint), bucket, moto_s3.endpoint, server.endpoint
    finally:
        server.close()


def listing(client: Any, bucket: str, **kw: Any) -> list[tuple[int, bool, list[tuple[str, int]]]]:
    """Every page of a ListObjectsV2 walk: (KeyCount, IsTruncated, [(key, size)])."""
    pages = []
    token = None
    while True:
        args = dict(Bucket=bucket, **kw)
        if token:
            args["ContinuationToken"] = token
        r = client.list_objects_v2(**args)
        pages.append((r["KeyCount"], r["IsTruncated"], [(o["Key"], o["Size"]) for o in r.get("Contents", [])]))
        assert r.get("Prefix", "") == kw.get("Prefix", "")
        token = r.get("NextContinuationToken")
        if not r["IsTruncated"]:
            return pages


@pytest.mark.s3
@pytest.mark.parametrize("kw", [
    {}, {"Prefix": "db/"}, {"Prefix": "db/0000/", "MaxKeys": 5}, {"Prefix": "db/0000/", "MaxKeys": 23},
    {"Prefix": "db/0000/", "StartAfter": "db/0000/0000000000000009-ffffffffffffffff.ltx", "MaxKeys": 4},
    {"Prefix": "db/0000/", "StartAfter": "db/0001/"}, {"Prefix": "nothing/"}, {"Prefix": "db/notes/"},
    {"MaxKeys": 1}, {"StartAfter": "a", "MaxKeys": 7},
])
def test_list_pages_like_moto(pair: Any, kw: dict[str, Any]) -> None:
    moto, bench, bucket, *_ = pair
    assert listing(bench, bucket, **kw) == listing(moto, bucket, **kw)


@pytest.mark.s3
@pytest.mark.parametrize("range_", [None, "bytes=0-9", "bytes=5-", "bytes=-7", "bytes=100-100000", "bytes=0-0"])
def test_get_and_head_like_moto(pair: Any, range_: str | None) -> None:
    moto, bench, bucket, *_ = pair
    key = KEYS[3]
    kw = {"Range": range_} if range_ else {}
    a, b = moto.get_object(Bucket=bucket, Key=key, **kw), bench.get_object(Bucket=bucket, Key=key, **kw)
    assert b["Body"].read() == a["Body"].read()
    for field in ("ContentLength", "ContentRange", "AcceptRanges"):
        assert b.get(field) == a.get(field), field
    assert b["ResponseMetadata"]["HTTPStatusCode"] == a["ResponseMetadata"]["HTTPStatusCode"]
    ha, hb = moto.head_object(Bucket=bucket, Key=key), bench.head_object(Bucket=bucket, Key=key)
    assert hb["ContentLength"] == ha["ContentLength"] == len(body(key))


@pytest.mark.s3
def test_errors_like_moto(pair: Any) -> None:
    from botocore.exceptions import ClientError

    moto, bench, bucket, *_ = pair

    def code(call: Any, **kw: Any) -> tuple[str, int]:
        with pytest.raises(ClientError) as e:
            call(**kw)
        return e.value.response["Error"]["Code"], e.value.response["ResponseMetadata"]["HTTPStatusCode"]

    for name, kw in (("get_object", {"Bucket": bucket, "Key": "db/none"}),
                     ("get_object", {"Bucket": bucket, "Key": KEYS[0], "Range": "bytes=100000-100010"}),
                     ("get_object", {"Bucket": "no-such-bucket", "Key": "x"}),
                     ("list_objects_v2", {"Bucket": "no-such-bucket"}),
                     ("head_object", {"Bucket": bucket, "Key": "db/none"})):
        assert code(getattr(bench, name), **kw) == code(getattr(moto, name), **kw), (name, kw)


@pytest.mark.s3
def test_lsvfs_reads_both_alike(pair: Any, s3_env: None) -> None:
    """lsvfs's own client lists, reads and fails the same on both servers."""
    *_, bucket, moto_ep, bench_ep = pair
    a, b = (open_storage(f"s3://{bucket}/db?endpoint={ep}&region=us-east-1") for ep in (moto_ep, bench_ep))
    for level in (0, 1, 9):
        assert [(f.min_txid, f.max_txid, f.size) for f in b.list_files(level)] == \
               [(f.min_txid, f.max_txid, f.size) for f in a.list_files(level)]
    assert [(f.level, f.min_txid) for f in b.list_every_level(5)] == [(f.level, f.min_txid) for f in a.list_every_level(5)]
    f = a.list_files(0)[4]
    assert b.read(f, 3, 50) == a.read(f, 3, 50) and b.read_all(f) == a.read_all(f)
    for st in (a, b):
        with pytest.raises(MissingFileError, match="NoSuchKey"):
            st.read(FileInfo(0, 0x999, 0x999, 10), 0, 10)
        with pytest.raises(StorageError, match="InvalidRange"):
            st.read(f, 100_000, 10)
        st.close()
