"""Issue 19: S3 request paths side by side, each in fresh processes, against bench/s3_server.py.

    python bench/compare_s3_clients.py [--rounds 3] [--gets 300] [--rtt-ms 20]

Candidates (every one signs SigV4 and reuses keep-alive connections):

- `botocore`: the client lsvfs shipped before (botocore's S3 client without
  boto3's wrapper, standard retries, a 64-connection pool);
- `urllib3+botocore-signer`: a urllib3 PoolManager, requests signed by
  botocore's S3SigV4Auth;
- `urllib3+own-signer`: the same pool, signed by lsvfs.storage.sigv4;
- `awscrt`: the AWS Common Runtime (C): its SigV4 signer and HTTP client
  connections (boto3[crt]'s engine), if the package is installed;
- `lsvfs`: lsvfs.storage.s3_client.S3Client (http.client, our signer, our pool).

For each: import time and client set-up (fresh process, wall), CPU per ranged
4 KiB GET and per 1000-key LIST page (sequential, this process's CPU time),
and the wall time of a burst of 64 ranged GETs from 64 threads, straight to the
server and through a latency proxy (`--rtt-ms`). The server runs in its own
process, so its CPU is not counted. Prints one JSON line per candidate and
round, then a markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

CANDIDATES = ("botocore", "urllib3+botocore-signer", "urllib3+own-signer", "awscrt", "lsvfs")
BUCKET = "bench"
KEYS = 1000
OBJ = 1 << 20
BURST = 64
KEY_ID, SECRET = "test", "test"


class Candidate:
    get: Callable[[str, int, int], bytes]
    list_page: Callable[[str], int]


def make(name: str, endpoint: str) -> Any:
    """(import seconds, set-up seconds, object with get(key, offset, n) and list_page(prefix))."""
    t = time.perf_counter()
    if name == "botocore":
        import botocore.session
        from botocore.config import Config

        imported = time.perf_counter()
        client = botocore.session.get_session().create_client(
            "s3", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET, config=Config(retries={"mode": "standard", "total_max_attempts": 3},
                                                        max_pool_connections=64, s3={"addressing_style": "path"}))

        class Boto:
            def get(self, key: str, off: int, n: int) -> bytes:
                r = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={off}-{off + n - 1}")
                data: bytes = r["Body"].read()
                return data

            def list_page(self, prefix: str) -> int:
                return len(client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=1000).get("Contents", []))

        obj: Any = Boto()
    elif name.startswith("urllib3"):
        import urllib3

        from lsvfs.storage.s3_client import parse_list

        own = name.endswith("own-signer")
        if own:
            from lsvfs.storage.sigv4 import EMPTY_SHA256, SigningKeys, canonical_query, sign
        else:
            from botocore.auth import S3SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.credentials import Credentials
        imported = time.perf_counter()
        pool = urllib3.PoolManager(maxsize=64)
        host = endpoint.split("://")[1]

        if own:
            keys = SigningKeys()

            def signed(path: str, query: str, extra: dict[str, str]) -> dict[str, str]:
                amz = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                h = {"host": host, "x-amz-date": amz, "x-amz-content-sha256": EMPTY_SHA256, **extra}
                h["authorization"] = sign("GET", path, query, h, access_key_id=KEY_ID,
                                          signing_key=keys.get(SECRET, amz[:8], "us-east-1", "s3"), amz_date=amz,
                                          region="us-east-1", service="s3")
                return h
        else:
            creds = Credentials(KEY_ID, SECRET)

            def signed(path: str, query: str, extra: dict[str, str]) -> dict[str, str]:
                req = AWSRequest("GET", f"{endpoint}{path}" + (f"?{query}" if query else ""), headers=extra)
                S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
                return dict(req.headers.items())

        class U3:
            def get(self, key: str, off: int, n: int) -> bytes:
                path = f"/{BUCKET}/{key}"
                headers = signed(path, "", {"range": f"bytes={off}-{off + n - 1}"})
                r = pool.request("GET", endpoint + path, headers=headers)
                assert r.status == 206, r.status
                return bytes(r.data)

            def list_page(self, prefix: str) -> int:
                from urllib.parse import quote
                q = f"list-type=2&max-keys=1000&prefix={quote(prefix, safe='~')}"
                r = pool.request("GET", f"{endpoint}/{BUCKET}?{q}", headers=signed(f"/{BUCKET}", q, {}))
                return len(parse_list(r.data).objects)  # one parser for all: the request path is compared

        if own:
            q0 = canonical_query([("list-type", "2"), ("max-keys", "1000"), ("prefix", "x")])
            assert q0 == "list-type=2&max-keys=1000&prefix=x"
        obj = U3()
    elif name == "awscrt":
        from awscrt import auth, http, io

        imported = time.perf_counter()
        elg = io.EventLoopGroup(1)
        bootstrap = io.ClientBootstrap(elg, io.DefaultHostResolver(elg))
        provider = auth.AwsCredentialsProvider.new_static(KEY_ID, SECRET)
        cfg = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4, signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=provider, region="us-east-1", service="s3",
            signed_body_value=auth.AwsSignedBodyValue.EMPTY_SHA256,
            signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256)
        host, port = endpoint.split("://")[1].split(":")
        idle: list[Any] = []
        lock = threading.Lock()

        def conn() -> Any:
            with lock:
                if idle:
                    return idle.pop()
            return http.HttpClientConnection.new(host_name=host, port=int(port), bootstrap=bootstrap).result(10)

        def call(path: str, extra: list[tuple[str, str]]) -> tuple[int, bytes]:
            req = http.HttpRequest("GET", path, headers=http.HttpHeaders([("host", f"{host}:{port}"), *extra]))
            auth.aws_sign_request(req, cfg).result()
            c = conn()
            parts: list[bytes] = []
            status: list[int] = []
            stream = c.request(req, on_response=lambda status_code, **_: status.append(status_code),
                               on_body=lambda chunk, **_: parts.append(bytes(chunk)))
            stream.activate()
            stream.completion_future.result(30)
            with lock:
                idle.append(c)
            return status[0], b"".join(parts)

        class Crt:
            def get(self, key: str, off: int, n: int) -> bytes:
                status, data = call(f"/{BUCKET}/{key}", [("range", f"bytes={off}-{off + n - 1}")])
                assert status == 206, status
                return data

            def list_page(self, prefix: str) -> int:
                from urllib.parse import quote

                from lsvfs.storage.s3_client import parse_list
                _, data = call(f"/{BUCKET}?list-type=2&max-keys=1000&prefix={quote(prefix, safe='~')}", [])
                return len(parse_list(data).objects)

        obj = Crt()
    else:
        from lsvfs.storage.s3_client import S3Client, S3Config
        from lsvfs.storage.s3_credentials import Credentials as LCredentials
        from lsvfs.storage.s3_credentials import StaticSource

        imported = time.perf_counter()
        client = S3Client(S3Config(region="us-east-1", endpoint=endpoint, path_style=True),
                          StaticSource(LCredentials(KEY_ID, SECRET), "given"))

        class Ours:
            def get(self, key: str, off: int, n: int) -> bytes:
                return client.get_object(BUCKET, key, (off, off + n - 1))

            def list_page(self, prefix: str) -> int:
                return len(client.list_objects(BUCKET, prefix, max_keys=1000).objects)

        obj = Ours()
    done = time.perf_counter()
    return imported - t, done - imported, obj


def burst(obj: Any) -> float:
    """Wall seconds for 64 threads to each make one ranged GET, released together."""
    gate = threading.Barrier(BURST + 1)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        gate.wait()
        try:
            assert len(obj.get(f"obj/{i % 8}", i * 4096, 4096)) == 4096
        except BaseException as e:  # noqa: BLE001 - reported
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def child(name: str, endpoint: str, proxied: str, gets: int) -> dict[str, Any]:
    import lsvfs  # noqa: F401 - every candidate runs inside lsvfs: its own import is not the candidate's

    import_s, setup_s, obj = make(name, endpoint)
    obj.get("obj/0", 0, 4096)  # connect
    c = time.process_time()
    for i in range(gets):
        obj.get(f"obj/{i % 8}", (i * 4096) % (OBJ - 4096), 4096)
    get_cpu = (time.process_time() - c) / gets
    obj.list_page("keys/")
    pages = 20
    c = time.process_time()
    for _ in range(pages):
        assert obj.list_page("keys/") == KEYS
    list_cpu = (time.process_time() - c) / pages
    burst(obj)  # warm: the pool's connections are open
    direct = burst(obj)
    _, _, far = make(name, proxied)
    burst(far)
    via_proxy = burst(far)
    return {"candidate": name, "import_s": import_s, "setup_s": setup_s, "get_cpu_ms": get_cpu * 1000,
            "list_page_cpu_ms": list_cpu * 1000, "burst64_s": direct, "burst64_proxied_s": via_proxy}


def lay_out(root: Path) -> None:
    b = root / BUCKET
    (b / "obj").mkdir(parents=True)
    (b / "keys").mkdir()
    for i in range(8):
        (b / "obj" / str(i)).write_bytes(os.urandom(OBJ))
    for i in range(KEYS):
        (b / "keys" / f"{i:016x}-{i:016x}.ltx").write_bytes(b"x" * 100)


def child_env() -> dict[str, str]:
    """Bytecode cached as an installed package has it (PYTHONDONTWRITEBYTECODE would compile
    every module from source in every fresh process)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(HERE.parent)
    return env


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gets", type=int, default=300)
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--child", nargs=3, metavar=("NAME", "ENDPOINT", "PROXIED"))
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.child[2], args.gets)), flush=True)
        return
    from latency_proxy import proxy_process
    from s3_server import server_process

    try:
        import awscrt  # noqa: F401
        names = CANDIDATES
    except ImportError:
        names = tuple(c for c in CANDIDATES if c != "awscrt")
    with tempfile.TemporaryDirectory() as tmp:
        lay_out(Path(tmp))
        server: Any = server_process(Path(tmp))
        proxy: Any = proxy_process(server.port, args.rtt_ms / 2000)
        results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        try:
            for _ in range(args.rounds + 1):  # the first round warms the OS cache and the bytecode; not kept
                for name in names:  # interleaved, so drift on a shared machine hits all alike
                    out = subprocess.run([sys.executable, __file__, "--gets", str(args.gets), "--child", name,
                                          f"http://127.0.0.1:{server.port}", f"http://127.0.0.1:{proxy.port}"],
                                         capture_output=True, text=True, timeout=600,
                                         env=child_env())
                    if out.returncode != 0:
                        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    print(json.dumps(r), flush=True)
                    results[name].append(r)
            for name in names:
                del results[name][0]
        finally:
            proxy.stop()
            server.stop()
    cols = ("import_s", "setup_s", "get_cpu_ms", "list_page_cpu_ms", "burst64_s", "burst64_proxied_s")
    print(f"\nmedians of {args.rounds} rounds; burst64 proxied at {args.rtt_ms:g} ms RTT\n")
    print("| candidate | import ms | set-up ms | CPU ms / ranged GET | CPU ms / 1000-key LIST page "
          "| 64 GETs burst ms | "
          f"64 GETs burst ms at {args.rtt_ms:g} ms RTT |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        med = {c: statistics.median(r[c] for r in results[name]) for c in cols}
        print(f"| {name} | {med['import_s'] * 1000:.0f} | {med['setup_s'] * 1000:.1f} | {med['get_cpu_ms']:.3f} | "
              f"{med['list_page_cpu_ms']:.2f} | {med['burst64_s'] * 1000:.0f} | "
              f"{med['burst64_proxied_s'] * 1000:.0f} |")


if __name__ == "__main__":
    main()
