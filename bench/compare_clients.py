"""Which HTTP client should read WebDAV and OSS replicas? Measured, not guessed (issue 9).

WebDAV clients:
- `requests`: lsvfs's WebDAVStorage as shipped (one pooled requests.Session);
- `httpx`: the same WebDAVStorage code, its session swapped for an httpx.Client
  (so only the HTTP client differs: same PROPFIND body, same XML parsing);
- `webdav4`: webdav4's own API (`Client.ls`, `Client.open` + seek + read),
  which is httpx underneath.

OSS clients:
- `lsvfs`: lsvfs's OSSStorage as shipped (lsvfs's own S3 client on OSS's
  S3-compatible API, V4 signatures; until issue 19 this was botocore's client,
  measured here as `boto3`, and bench/compare_s3_clients.py now compares S3
  request paths);
- `oss2`: Alibaba's SDK (`Bucket.list_objects_v2`, `get_object(byte_range=)`),
  OSS4-HMAC-SHA256 signatures (oss2.AuthV4), its defaults otherwise.

The servers are the backend tests' (tests/servers.py: wsgidav on cheroot;
moto behind OSSGateway, which answers OSS-signed requests as OSS does), each
in its own process, behind bench/latency_proxy.py's proxy (in a third
process) adding the same one-way delay. So this process runs only the
client, and its CPU time (time.process_time) is the client's.

Operations, each on a warm connection (one untimed pass first):
- list: one listing of a level holding 200 files (repeated `--lists` times);
- ranged: 200 reads of 4 KiB at random offsets in those files;
- whole: one read of a 4 MiB file (repeated `--wholes` times).
Every byte read is checked against what was uploaded (outside the timing).
Clients take turns, round by round; the table shows, per request, the median
over rounds of client CPU and wall time.

    python bench/compare_clients.py [--rounds 5] [--latency-ms 2] [--json out.json]

Needs `pip install httpx webdav4 oss2` for the alternatives; a client whose
package is missing is left out, with a note on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(HERE), str(ROOT / "tests"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from latency_proxy import proxy_process  # noqa: E402

from lsvfs.storage.base import FileInfo, Layout, format_filename, level_dir  # noqa: E402

log = logging.getLogger("lsvfs.bench.clients")

FILES = 200
FILE_SIZE = 32 << 10
READ = 4 << 10
WHOLE = 4 << 20
USER, PASSWORD = "lsvfs", "dav-Pa55-word"  # tests/servers.py's WebDAV account
OSS_KEY, OSS_SECRET = "bench-key-id", "bench-key-secret"  # moto checks no signature


# -- the replica-shaped data ----------------------------------------------------------------------

@dataclass
class Data:
    """200 files of 32 KiB in level 0, one 4 MiB file in level 9, and the reads to make."""

    small: list[tuple[FileInfo, bytes]]
    big: tuple[FileInfo, bytes]
    reads: list[tuple[int, int]]
    """(index into small, offset) of each 4 KiB ranged read."""

    @classmethod
    def make(cls, seed: int = 9) -> Data:
        rnd = random.Random(seed)
        small = [(FileInfo(0, i, i, FILE_SIZE), rnd.randbytes(FILE_SIZE)) for i in range(1, FILES + 1)]
        big = (FileInfo(9, 1, FILES, WHOLE), rnd.randbytes(WHOLE))
        reads = [(rnd.randrange(FILES), rnd.randrange(FILE_SIZE - READ)) for _ in range(200)]
        return cls(small, big, reads)

    def named(self, layout: Layout) -> Iterator[tuple[str, bytes]]:
        """(relative name, bytes) of every file in `layout` ("ltx" or "hex")."""
        for f, data in [*self.small, self.big]:
            yield level_dir("", f.level, layout) + format_filename(f.min_txid, f.max_txid), data


# -- the clients: each lists a level, reads a range, reads a whole file ---------------------------------

class Client:
    name = ""
    backend = ""

    def list_level(self, level: int) -> list[tuple[int, int, int]]:
        """(min_txid, max_txid, size) of every file of `level`."""
        raise NotImplementedError

    def read(self, f: FileInfo, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def read_all(self, f: FileInfo) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class StorageClient(Client):
    """Through an lsvfs storage (WebDAVStorage, OSSStorage): the shipped code path."""

    def __init__(self, name: str, backend: str, storage: Any) -> None:
        self.name, self.backend, self.storage = name, backend, storage

    def list_level(self, level: int) -> list[tuple[int, int, int]]:
        return [(f.min_txid, f.max_txid, f.size) for f in self.storage.list_files(level)]

    def read(self, f: FileInfo, offset: int, length: int) -> bytes:
        return bytes(self.storage.read(f, offset, length))

    def read_all(self, f: FileInfo) -> bytes:
        return bytes(self.storage.read_all(f))

    def close(self) -> None:
        self.storage.close()


class HttpxSession:
    """What WebDAVStorage asks of a requests.Session, done by an httpx.Client."""

    def __init__(self, user: str, password: str) -> None:
        import httpx

        self.client = httpx.Client(auth=(user, password), timeout=httpx.Timeout(30.0, connect=5.0),
                                   limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None,
                timeout: Any = None, verify: Any = None) -> Any:
        resp = self.client.request(method, url, headers=headers, content=data)
        resp.reason = resp.reason_phrase  # requests' name for it, used in WebDAVStorage's errors
        return resp

    def close(self) -> None:
        self.client.close()


class HttpxWebDAV(StorageClient):
    def __init__(self, port: int, path: str) -> None:
        from lsvfs.storage.webdav import WebDAVStorage

        st = WebDAVStorage("127.0.0.1", path, port=port, user=USER, password=PASSWORD)
        st._lease.close()  # drop the requests session it made; httpx does the talking
        self.session = HttpxSession(USER, PASSWORD)
        st._session = self.session
        super().__init__("httpx", "webdav", st)

    def close(self) -> None:
        self.session.close()


class WebDAV4(Client):
    """webdav4's own API: `ls` for a listing, `open` + `seek` + `read` for a range."""

    name, backend = "webdav4", "webdav"

    def __init__(self, port: int, path: str) -> None:
        from webdav4.client import Client as DAVClient

        self.path = path
        self.dav = DAVClient(f"http://127.0.0.1:{port}", auth=(USER, PASSWORD), retry=False)

    def _name(self, f: FileInfo) -> str:
        return level_dir(self.path, f.level, "ltx") + format_filename(f.min_txid, f.max_txid)

    def list_level(self, level: int) -> list[tuple[int, int, int]]:
        from lsvfs.storage.base import parse_filename

        out = []
        for e in self.dav.ls(level_dir(self.path, level, "ltx"), detail=True):
            assert isinstance(e, dict)
            lo, hi = parse_filename(e["name"].rsplit("/", 1)[-1])
            out.append((lo, hi, int(e["content_length"])))
        return sorted(out)

    def read(self, f: FileInfo, offset: int, length: int) -> bytes:
        with self.dav.open(self._name(f), "rb") as fh:
            fh.seek(offset)
            return bytes(fh.read(length))

    def read_all(self, f: FileInfo) -> bytes:
        with self.dav.open(self._name(f), "rb") as fh:
            return bytes(fh.read())

    def close(self) -> None:
        self.dav.http.close()


class OSS2(Client):
    """Alibaba's oss2 SDK with V4 signatures; with `crc=False`, without its CRC-64 of whole reads."""

    backend = "oss"

    def __init__(self, endpoint: str, bucket: str, path: str, crc: bool = True) -> None:
        import oss2

        self.name = "oss2" if crc else "oss2, no CRC"
        self.path = path
        self.bucket = oss2.Bucket(oss2.AuthV4(OSS_KEY, OSS_SECRET), endpoint, bucket, region="us-east-1",
                                  connect_timeout=5, enable_crc=crc)

    def _key(self, f: FileInfo) -> str:
        return level_dir(self.path, f.level, "hex") + format_filename(f.min_txid, f.max_txid)

    def list_level(self, level: int) -> list[tuple[int, int, int]]:
        from lsvfs.storage.base import parse_filename

        prefix = level_dir(self.path, level, "hex")
        out, token = [], ""
        while True:
            r = self.bucket.list_objects_v2(prefix=prefix, continuation_token=token, max_keys=1000)
            for o in r.object_list:
                lo, hi = parse_filename(o.key[len(prefix):])
                out.append((lo, hi, int(o.size)))
            if not r.is_truncated:
                return sorted(out)
            token = r.next_continuation_token

    def read(self, f: FileInfo, offset: int, length: int) -> bytes:
        return bytes(self.bucket.get_object(self._key(f), byte_range=(offset, offset + length - 1)).read())

    def read_all(self, f: FileInfo) -> bytes:
        return bytes(self.bucket.get_object(self._key(f)).read())


# -- servers, each in its own process, behind a proxy in another -----------------------------------

@dataclass
class Served:
    clients: list[Callable[[], Client]]
    stops: list[Callable[[], None]] = field(default_factory=list)

    def stop(self) -> None:
        for s in reversed(self.stops):
            with contextlib.suppress(Exception):
                s()


def serve_webdav(data: Data, base: Path, delay: float) -> Served:
    import servers

    sp = servers.ServerProcess("webdav", base / "webdav")
    served = Served([], [sp.stop])
    root = Path(sp.facts["root"]) / "replica"
    for name, blob in data.named("ltx"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    proxy = proxy_process(sp.port, delay)
    served.stops.append(proxy.stop)

    def shipped() -> Client:
        from lsvfs.storage.webdav import WebDAVStorage

        return StorageClient("requests", "webdav", WebDAVStorage("127.0.0.1", "replica", port=proxy.port,
                                                                 user=USER, password=PASSWORD))

    served.clients.append(shipped)
    if _importable("httpx"):
        served.clients.append(lambda: HttpxWebDAV(proxy.port, "replica"))
    if _importable("webdav4"):
        served.clients.append(lambda: WebDAV4(proxy.port, "replica"))
    return served


def serve_oss(data: Data, base: Path, delay: float) -> Served:
    import servers
    from replication import MotoS3

    sp = servers.ServerProcess("oss", base / "oss")
    served = Served([], [sp.stop])
    moto = MotoS3()
    moto.endpoint = sp.facts["endpoint"]
    bucket = moto.create_bucket("bench")
    s3 = moto.client()
    for name, blob in data.named("hex"):
        s3.put_object(Bucket=bucket, Key="db/" + name, Body=blob)
    proxy = proxy_process(sp.port, delay)
    served.stops.append(proxy.stop)
    endpoint = f"http://127.0.0.1:{proxy.port}"

    def shipped() -> Client:
        from lsvfs.storage.oss import OSSStorage

        return StorageClient("lsvfs", "oss", OSSStorage(bucket, "db", endpoint=endpoint, region="us-east-1",
                                                        access_key_id=OSS_KEY, secret_access_key=OSS_SECRET))

    served.clients += [shipped]
    if _importable("oss2"):
        served.clients.append(lambda: OSS2(endpoint, bucket, "db"))
        served.clients.append(lambda: OSS2(endpoint, bucket, "db", crc=False))
    return served


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        log.warning("%s is not installed: left out (pip install %s)", module, module)
        return False
    return True


# -- measuring --------------------------------------------------------------------------------------

OPS = ("list", "ranged", "whole")


def measure(c: Client, data: Data, op: str, lists: int, wholes: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per request of one pass of `op`; the bytes are checked after."""
    got: list[Any] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if op == "list":
        for _ in range(lists):
            got.append(c.list_level(0))
        n = lists
    elif op == "ranged":
        for i, off in data.reads:
            got.append(c.read(data.small[i][0], off, READ))
        n = len(data.reads)
    else:
        for _ in range(wholes):
            got.append(c.read_all(data.big[0]))
        n = wholes
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if op == "list":
        want = [(f.min_txid, f.max_txid, f.size) for f, _ in data.small]
        assert all(g == want for g in got), f"{c.name}: wrong listing"
    elif op == "ranged":
        assert all(g == data.small[i][1][off:off + READ] for g, (i, off) in zip(got, data.reads)), \
            f"{c.name}: wrong bytes"
    else:
        assert all(g == data.big[1] for g in got), f"{c.name}: wrong bytes"
    return cpu / n, wall / n


def run(rounds: int, delay: float, lists: int, wholes: int) -> list[dict[str, Any]]:
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    data = Data.make()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lsvfs-bench-clients-") as tmp:
        for serve in (serve_webdav, serve_oss):
            served = serve(data, Path(tmp), delay)
            try:
                clients = [make() for make in served.clients]
                samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
                for c in clients:  # warm: connections open, lazy imports done, correctness checked
                    for op in OPS:
                        measure(c, data, op, 1, 1)
                for r in range(rounds):
                    for c in clients if r % 2 == 0 else clients[::-1]:
                        for op in OPS:
                            samples.setdefault((c.name, op), []).append(measure(c, data, op, lists, wholes))
                    log.info("%s: round %d of %d done", clients[0].backend, r + 1, rounds)
                for c in clients:
                    for op in OPS:
                        s = samples[(c.name, op)]
                        results.append({"backend": c.backend, "client": c.name, "op": op, "rounds": len(s),
                                        "cpu_ms": statistics.median(x[0] for x in s) * 1000,
                                        "wall_ms": statistics.median(x[1] for x in s) * 1000})
                    c.close()
            finally:
                served.stop()
    return results


def table(results: list[dict[str, Any]], delay: float) -> str:
    lines = [f"{delay * 1000:g} ms added each way; per request, median of rounds: client CPU ms / wall ms "
             "(ratio to the shipped client's CPU)", "",
             "| backend | client | list 200 files | 4 KiB ranged read | 4 MiB read |", "|---|---|---|---|---|"]
    shipped = {(r["backend"], r["op"]): r["cpu_ms"] for r in results if r["client"] in ("requests", "boto3")}
    rows: dict[tuple[str, str], list[str]] = {}
    for r in results:
        ratio = r["cpu_ms"] / shipped[(r["backend"], r["op"])]
        rows.setdefault((r["backend"], r["client"]), []).append(
            f"{r['cpu_ms']:.2f} / {r['wall_ms']:.2f} ({ratio:.2f}x)")
    for (backend, client), cells in rows.items():
        lines.append(f"| {backend} | {client} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency-ms", type=float, default=2.0, help="added one-way delay (default 2)")
    ap.add_argument("--lists", type=int, default=20, help="listings per round (default 20)")
    ap.add_argument("--wholes", type=int, default=5, help="4 MiB reads per round (default 5)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    delay = args.latency_ms / 1000
    results = run(args.rounds, delay, args.lists, args.wholes)
    if args.json:
        Path(args.json).write_text(json.dumps({"one_way_delay_ms": args.latency_ms, "results": results}, indent=1))
    sys.stdout.write(table(results, delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
