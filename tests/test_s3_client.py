"""lsvfs's own S3 client: SigV4 against botocore's signer, listings, close() with a
request in flight, and every credential source this machine can stand up."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from replication import AuthMotoS3

from lsvfs.errors import StorageError
from lsvfs.storage import FileInfo, SharedClients, open_storage
from lsvfs.storage.s3 import S3Storage
from lsvfs.storage.s3_client import S3Client, S3Config, S3Error, parse_list
from lsvfs.storage.s3_credentials import BotocoreSource, ContainerSource, Credentials, StaticSource, resolve
from lsvfs.storage.sigv4 import EMPTY_SHA256, canonical_query, derive_key, sign, uri_encode

# -- SigV4 against botocore ----------------------------------------------------------

SIGN_CASES = [
    ("GET", "http://127.0.0.1:9000/bkt/db/0000/0000000000000001-0000000000000001.ltx", {"Range": "bytes=0-99"},
     None, "us-east-1"),
    ("GET", "http://127.0.0.1:9000/bkt?list-type=2&prefix=db%2F0000%2F&max-keys=1000&encoding-type=url"
     "&start-after=db%2F0000%2F0000000000000009-ffffffffffffffff.ltx", {}, None, "eu-central-1"),
    ("GET", "http://bkt.s3.us-west-2.amazonaws.com/a%20b/c~d/%E2%82%AC.ltx", {}, "FwoGZXIvYXdzEJr//token=", "us-west-2"),
    ("GET", "http://oss-cn-hangzhou.aliyuncs.com/b/k?continuation-token=1%2Fab%3D%3D&list-type=2", {}, None,
     "cn-hangzhou"),
]


@pytest.mark.parametrize("method,url,extra,token,region", SIGN_CASES)
def test_sigv4_matches_botocore(method: str, url: str, extra: dict[str, str], token: str | None, region: str) -> None:
    """Our signature of a request is botocore's for the same request, time and keys
    (its S3 signer, payload hashed as on plain HTTP)."""
    from urllib.parse import parse_qsl, urlsplit

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    key_id, secret = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    req = AWSRequest(method=method, url=url, headers=dict(extra))
    S3SigV4Auth(BotoCredentials(key_id, secret, token), "s3", region).add_auth(req)
    amz_date = req.headers["X-Amz-Date"]
    parts = urlsplit(url)
    headers = {"host": parts.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": EMPTY_SHA256, **extra}
    if token:
        headers["x-amz-security-token"] = token
    query = canonical_query(parse_qsl(parts.query, keep_blank_values=True))
    ours = sign(method, parts.path, query, headers, access_key_id=key_id,
                signing_key=derive_key(secret, amz_date[:8], region, "s3"), amz_date=amz_date, region=region,
                service="s3")
    assert req.headers["X-Amz-Content-SHA256"] == EMPTY_SHA256
    assert ours == req.headers["Authorization"]


def test_uri_encoding() -> None:
    assert uri_encode("a b/c~d_e-f.g", path=True) == "a%20b/c~d_e-f.g"
    assert uri_encode("a/b=c") == "a%2Fb%3Dc"
    assert canonical_query([("b", "2"), ("a", "x y"), ("list-type", "2")]) == "a=x%20y&b=2&list-type=2"


# -- listings --------------------------------------------------------------------------


def test_parse_list_decodes_keys_and_tokens() -> None:
    body = (b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            b"<Name>b</Name><Prefix>db%2F</Prefix><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>"
            b"<Contents><Key>db%2F0000%2Fa%26b.ltx</Key><LastModified>2024-05-01T10:11:12.000Z</LastModified>"
            b"<ETag>&quot;x&quot;</ETag><Size>123</Size></Contents>"
            b"<Contents><Key>db%2F0009%2Fz.ltx</Key><Size>7</Size></Contents>"
            b"<NextContinuationToken>1a/b+c==&amp;</NextContinuationToken></ListBucketResult>")
    page = parse_list(body)
    assert [(o.key, o.size) for o in page.objects] == [("db/0000/a&b.ltx", 123), ("db/0009/z.ltx", 7)]
    assert page.objects[0].modified == datetime(2024, 5, 1, 10, 11, 12, tzinfo=timezone.utc)
    assert page.objects[1].modified is None
    assert page.next_token == "1a/b+c==&"
    # A server that ignores encoding-type=url sends XML-escaped keys; not truncated: no token.
    plain = parse_list(b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a&amp;%41</Key>"
                       b"<Size>1</Size></Contents></ListBucketResult>")
    assert [o.key for o in plain.objects] == ["a&%41"] and plain.next_token is None
    with pytest.raises(S3Error, match="continuation token"):
        parse_list(b"<ListBucketResult><IsTruncated>true</IsTruncated><Contents><Key>a</Key></Contents>"
                   b"</ListBucketResult>")


# -- a local S3 stand-in that records what it was sent ----------------------------------------


class Recorder:
    """An HTTP server on 127.0.0.1 answering every GET with an empty listing (or `hold` it
    unanswered, or answer `status`), recording each request's headers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()
        self.status = 200
        self.statuses: list[int] = []
        """Statuses to answer first, one per request, before `status`."""
        self.close_after = False
        """Close each connection after its answer, without saying so (a server dropping idle keep-alives)."""
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                rec.requests.append({k.lower(): v for k, v in self.headers.items()})
                if rec.hold.is_set():
                    rec.held.set()
                    rec.release.wait(60)
                    return
                status = rec.statuses.pop(0) if rec.statuses else rec.status
                body = (b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>" if status == 200
                        else b"<Error><Code>SlowDown</Code><Message>slow down</Message></Error>")
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if rec.close_after:
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def key_ids(self) -> list[str]:
        return [r["authorization"].split("Credential=")[1].split("/")[0] for r in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    yield r
    r.close()


def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> None:
    """No AWS or Litestream variables but `env`; no ~/.aws files; no instance metadata."""
    for var in list(os.environ):
        if var.startswith(("AWS_", "LITESTREAM_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for k, v in env.items():
        monkeypatch.setenv(k, v)


# -- close() with a request in flight ----------------------------------------------------------


def test_close_ends_a_held_request(recorder: Recorder) -> None:
    """A read the server never answers (read timeout 60 s) ends when the storage is closed,
    with a StorageError saying so, long before its timeout; later calls fail at once."""
    recorder.hold.set()
    st = S3Storage("bkt", "db", endpoint=recorder.endpoint, region="us-east-1", access_key_id="AKID",
                   secret_access_key="s3cr3t-value", read_timeout=60.0)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            st.read(FileInfo(0, 1, 1, 10), 0, 10)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    assert recorder.held.wait(30), "the request never reached the server"
    st.close()
    t.join(15)  # a liveness bound, far below the 60 s read timeout; not a speed figure
    assert not t.is_alive(), "the held request outlived close()"
    assert len(errors) == 1 and isinstance(errors[0], StorageError) and "closed" in str(errors[0])
    with pytest.raises(StorageError, match="closed"):
        st.list_files(0)


def test_closing_one_storage_ends_only_its_requests(recorder: Recorder) -> None:
    """Storages on one endpoint share a client; closing one ends its held request while the
    client, and another storage's requests on it, go on."""
    clients = SharedClients()
    url = f"s3://bkt/{{}}?endpoint={recorder.endpoint}&region=us-east-1"
    env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "x" * 8}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        a, b = open_storage(url.format("a"), clients), open_storage(url.format("b"), clients)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert a._client is b._client  # type: ignore[attr-defined]
    recorder.hold.set()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            a.read(FileInfo(0, 1, 1, 10), 0, 10)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    t = threading.Thread(target=read)
    t.start()
    assert recorder.held.wait(30)
    recorder.hold.clear()
    a.close()
    t.join(15)  # a liveness bound, far below the 30 s read timeout
    assert not t.is_alive() and "closed" in str(errors[0])
    assert b.list_files(0) == [] and len(clients) == 1  # the shared client still serves b
    b.close()
    assert len(clients) == 0


def test_close_wakes_a_retry_backoff(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request waiting out its back-off between retries (503 SlowDown) ends at close()."""
    import lsvfs.storage.s3_client as s3_client

    draws = iter([0.001, 0.001, 1.0])  # back-offs of 1 ms, 2 ms, then 4 s
    monkeypatch.setattr(s3_client.random, "random", lambda: next(draws))
    recorder.status = 503
    st = S3Storage("bkt", "db", endpoint=recorder.endpoint, region="us-east-1", access_key_id="AKID",
                   secret_access_key="x" * 8, max_attempts=10)
    done: list[BaseException] = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(StorageError, st.list_files, 0).value))
    t.start()
    while len(recorder.requests) < 3:
        time.sleep(0.01)
    time.sleep(0.05)  # now in its 4 s back-off
    st.close()
    t.join(15)
    assert not t.is_alive() and "closed" in str(done[0])
    assert len(recorder.requests) == 3


def test_retries_throttling_then_succeeds(recorder: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    """503 SlowDown and 500 are retried (standard mode); the third attempt's answer is the result."""
    import lsvfs.storage.s3_client as s3_client

    monkeypatch.setattr(s3_client.random, "random", lambda: 0.001)
    recorder.statuses = [503, 500]
    st = S3Storage("bkt", "db", endpoint=recorder.endpoint, region="us-east-1", access_key_id="AKID",
                   secret_access_key="x" * 8)
    assert st.list_files(0) == [] and len(recorder.requests) == 3
    recorder.statuses = [503, 503, 503]
    with pytest.raises(StorageError, match="SlowDown"):
        st.list_files(0)
    assert len(recorder.requests) == 6  # three attempts, no more


def test_kept_connection_closed_by_the_server(recorder: Recorder) -> None:
    """A keep-alive connection the server has dropped is replaced without failing the request."""
    recorder.close_after = True
    st = S3Storage("bkt", "db", endpoint=recorder.endpoint, region="us-east-1", access_key_id="AKID",
                   secret_access_key="x" * 8, max_attempts=1)
    for _ in range(5):
        assert st.list_files(0) == []
    assert len(recorder.requests) == 5


# -- credential sources ----------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.s3
def test_shared_files_and_profiles(moto_s3_auth: AuthMotoS3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Static keys from the shared credentials file and the config file, by AWS_PROFILE,
    against a moto that checks signatures; env keys win over files; no botocore."""
    good, bad = (moto_s3_auth.access_key_id, moto_s3_auth.secret_access_key), ("AKIAWRONGWRONGWRONG1", "nope")
    creds = write(tmp_path / "credentials", f"[default]\naws_access_key_id = {bad[0]}\naws_secret_access_key = {bad[1]}\n"
                                              f"[reader]\naws_access_key_id = {good[0]}\n"
                                              f"aws_secret_access_key = {good[1]}\n")
    config = write(tmp_path / "config", f"[default]\nregion = us-east-1\n[profile cfg]\nregion = us-east-1\n"
                                        f"aws_access_key_id = {good[0]}\naws_secret_access_key = {good[1]}\n")
    url = moto_s3_auth.url()
    for profile, ok in ((None, False), ("reader", True), ("cfg", True)):
        clean_env(monkeypatch, tmp_path, AWS_SHARED_CREDENTIALS_FILE=creds, AWS_CONFIG_FILE=config)
        if profile:
            monkeypatch.setenv("AWS_PROFILE", profile)
        source = resolve()
        assert isinstance(source, StaticSource) and good[1] not in repr(source) + repr(source.get())
        st = open_storage(url)
        if ok:
            assert st.list_files(0) == []
        else:
            with pytest.raises(StorageError, match="InvalidAccessKeyId") as exc:
                st.list_files(0)
            assert bad[1] not in str(exc.value)
        st.close()
    clean_env(monkeypatch, tmp_path, AWS_SHARED_CREDENTIALS_FILE=creds, AWS_PROFILE="reader",
              AWS_ACCESS_KEY_ID=bad[0], AWS_SECRET_ACCESS_KEY=bad[1])
    assert resolve().get().access_key_id == bad[0]  # the environment comes before the files, as in botocore
    clean_env(monkeypatch, tmp_path, AWS_SHARED_CREDENTIALS_FILE=creds, AWS_PROFILE="nobody")
    with pytest.raises(StorageError, match="no usable AWS credentials.*nobody"):
        open_storage(url).list_files(0)


def test_session_tokens_are_sent_and_signed(recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """AWS_SESSION_TOKEN (and aws_session_token in a profile) goes out as x-amz-security-token, signed."""
    url = f"s3://bkt/db?endpoint={recorder.endpoint}&region=us-east-1"
    clean_env(monkeypatch, tmp_path, AWS_ACCESS_KEY_ID="ASIAENV", AWS_SECRET_ACCESS_KEY="env-secret",
              AWS_SESSION_TOKEN="env-token")
    open_storage(url).list_files(0)
    creds = write(tmp_path / "credentials", "[temp]\naws_access_key_id = ASIAFILE\naws_secret_access_key = fs\n"
                                            "aws_session_token = file-token\n")
    clean_env(monkeypatch, tmp_path, AWS_SHARED_CREDENTIALS_FILE=creds, AWS_PROFILE="temp")
    open_storage(url).list_files(0)
    # LITESTREAM_* keys are not the AWS_* ones: the AWS session token does not go with them.
    clean_env(monkeypatch, tmp_path, LITESTREAM_ACCESS_KEY_ID="LSKEY", LITESTREAM_SECRET_ACCESS_KEY="ls-secret",
              AWS_SESSION_TOKEN="stray-token")
    open_storage(url).list_files(0)
    got = [(r["authorization"].split("Credential=")[1].split("/")[0], r.get("x-amz-security-token"),
            "x-amz-security-token" in r["authorization"]) for r in recorder.requests]
    assert got == [("ASIAENV", "env-token", True), ("ASIAFILE", "file-token", True), ("LSKEY", None, False)]


class MetadataEndpoint:
    """An ECS-style container credentials endpoint on 127.0.0.1: each GET serves new keys
    (rotation) expiring in 5 minutes, inside botocore's refresh window, and only with the
    right Authorization token."""

    def __init__(self, token: str) -> None:
        self.served: list[str] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("Authorization") != token:
                    self.send_response(401)
                    self.end_headers()
                    return
                n = len(me.served) + 1
                me.served.append(f"ASIAROTATED{n:04d}")
                expires = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = json.dumps({"AccessKeyId": me.served[-1], "SecretAccessKey": f"rotated-secret-{n}",
                                   "Token": f"rotated-token-{n}", "Expiration": expires}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/credentials/abc"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("chain", ["ours", "botocore"])
def test_container_credentials_rotate(recorder: Recorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                      chain: str) -> None:
    """ECS/EKS-pod-identity credentials (AWS_CONTAINER_CREDENTIALS_FULL_URI + token), read by our
    ContainerSource (what resolve() picks) and by botocore's chain: as they near expiry each
    request gets the endpoint's newest keys."""
    meta = MetadataEndpoint("Bearer pod-token")
    try:
        token_file = write(tmp_path / "token", "Bearer pod-token")  # botocore refuses a trailing newline
        clean_env(monkeypatch, tmp_path, AWS_CONTAINER_CREDENTIALS_FULL_URI=meta.url,
                  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=token_file, AWS_CONTAINER_AUTHORIZATION_TOKEN="wrong")
        source = resolve()
        assert isinstance(source, ContainerSource)
        if chain == "botocore":
            source = BotocoreSource()
        client = S3Client(S3Config(region="us-east-1", endpoint=recorder.endpoint, path_style=True), source)
        st = S3Storage("bkt", "db", client=client)
        for _ in range(3):
            st.list_files(0)
        used = recorder.key_ids()
        assert len(meta.served) >= 3 and len(set(used)) == 3, (meta.served, used)
        assert used[-1] == meta.served[-1]
        assert [r["x-amz-security-token"] for r in recorder.requests][-1] == f"rotated-token-{len(meta.served)}"
        assert "rotated-secret" not in repr(source) + repr(client)
        st.close()
    finally:
        meta.close()


def test_container_endpoint_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A refused token fails with a StorageError naming the endpoint's answer, never the token; a
    FULL_URI that is neither https nor local is refused, as the SDKs refuse it."""
    meta = MetadataEndpoint("Bearer right")
    try:
        clean_env(monkeypatch, tmp_path, AWS_CONTAINER_CREDENTIALS_FULL_URI=meta.url,
                  AWS_CONTAINER_AUTHORIZATION_TOKEN="Bearer wrong-token")
        with pytest.raises(StorageError, match="container credentials endpoint failed \\(HTTP 401\\)") as exc:
            resolve().get()
        assert "wrong-token" not in str(exc.value)
    finally:
        meta.close()
    clean_env(monkeypatch, tmp_path, AWS_CONTAINER_CREDENTIALS_FULL_URI="http://169.254.169.254.example.com/x")
    with pytest.raises(StorageError, match="must be https"):
        resolve()


def test_credential_process(recorder: Recorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A profile with credential_process goes to botocore's chain, which runs it."""
    script = write(tmp_path / "creds.py", "import json\nprint(json.dumps({'Version': 1, 'AccessKeyId': 'AKIAPROCESS',"
                                          " 'SecretAccessKey': 'process-secret', 'SessionToken': 'process-token'}))\n")
    config = write(tmp_path / "config", f"[profile proc]\ncredential_process = {sys.executable} {script}\n")
    clean_env(monkeypatch, tmp_path, AWS_CONFIG_FILE=config, AWS_PROFILE="proc")
    source = resolve()
    assert isinstance(source, BotocoreSource)
    st = open_storage(f"s3://bkt/db?endpoint={recorder.endpoint}&region=us-east-1")
    st.list_files(0)
    assert recorder.key_ids() == ["AKIAPROCESS"]
    assert recorder.requests[0]["x-amz-security-token"] == "process-token"


@pytest.mark.s3
def test_assume_role_through_botocore(recorder: Recorder, moto_s3: Any, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    """A profile with role_arn + source_profile goes to botocore's chain, which calls STS
    (moto's, by AWS_ENDPOINT_URL_STS) and signs with the temporary keys it returns."""
    creds = write(tmp_path / "credentials", "[base]\naws_access_key_id = AKIABASE\naws_secret_access_key = base\n")
    config = write(tmp_path / "config", "[profile reader]\nrole_arn = arn:aws:iam::123456789012:role/reader\n"
                                        "source_profile = base\nregion = us-east-1\n")
    clean_env(monkeypatch, tmp_path, AWS_SHARED_CREDENTIALS_FILE=creds, AWS_CONFIG_FILE=config,
              AWS_PROFILE="reader", AWS_ENDPOINT_URL_STS=moto_s3.endpoint)
    assert isinstance(resolve(), BotocoreSource)
    open_storage(f"s3://bkt/db?endpoint={recorder.endpoint}&region=us-east-1").list_files(0)
    (key_id,) = recorder.key_ids()
    assert key_id.startswith("ASIA") and recorder.requests[0].get("x-amz-security-token")


@pytest.mark.s3
def test_web_identity_through_botocore(recorder: Recorder, moto_s3: Any, monkeypatch: pytest.MonkeyPatch,
                                       tmp_path: Path) -> None:
    """EKS IRSA: AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN go to botocore's chain, which calls
    STS AssumeRoleWithWebIdentity (moto's) and signs with the keys it returns."""
    token = write(tmp_path / "token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZXN0In0.c2ln")
    clean_env(monkeypatch, tmp_path, AWS_WEB_IDENTITY_TOKEN_FILE=token, AWS_REGION="us-east-1",
              AWS_ROLE_ARN="arn:aws:iam::123456789012:role/irsa", AWS_ROLE_SESSION_NAME="lsvfs-test",
              AWS_ENDPOINT_URL_STS=moto_s3.endpoint)
    assert isinstance(resolve(), BotocoreSource)
    open_storage(f"s3://bkt/db?endpoint={recorder.endpoint}&region=us-east-1").list_files(0)
    (key_id,) = recorder.key_ids()
    assert key_id.startswith("ASIA") and recorder.requests[0].get("x-amz-security-token")


class InstanceMetadata:
    """An EC2 instance metadata service (IMDSv2) on 127.0.0.1 serving a role's rotating keys."""

    def __init__(self) -> None:
        self.served: list[str] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:  # noqa: N802
                self._send(200, b"imds-session-token")

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") != "imds-session-token":
                    return self._send(401, b"")
                if self.path.rstrip("/") == "/latest/meta-data/iam/security-credentials":
                    return self._send(200, b"reader-role")
                if self.path == "/latest/meta-data/iam/security-credentials/reader-role":
                    n = len(me.served) + 1
                    me.served.append(f"ASIAIMDS{n:04d}")
                    expires = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
                    return self._send(200, json.dumps({
                        "Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": me.served[-1],
                        "SecretAccessKey": f"imds-secret-{n}", "Token": f"imds-token-{n}",
                        "Expiration": expires}).encode())
                return self._send(404, b"")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_instance_metadata_through_botocore(recorder: Recorder, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """With nothing else configured, EC2 instance metadata (IMDSv2, at AWS_EC2_METADATA_SERVICE_ENDPOINT)
    through botocore's chain, token and all. (Rotation is botocore's: keys served with under 15
    minutes left get their expiry pushed 5-10 minutes on, so three requests use one set.)"""
    imds = InstanceMetadata()
    try:
        clean_env(monkeypatch, tmp_path, AWS_EC2_METADATA_DISABLED="false",
                  AWS_EC2_METADATA_SERVICE_ENDPOINT=imds.endpoint)
        assert isinstance(resolve(), BotocoreSource)
        st = open_storage(f"s3://bkt/db?endpoint={recorder.endpoint}&region=us-east-1")
        for _ in range(3):
            st.list_files(0)
        used = recorder.key_ids()
        assert used == [imds.served[-1]] * 3, used
        assert recorder.requests[-1]["x-amz-security-token"] == f"imds-token-{len(imds.served)}"
        st.close()
    finally:
        imds.close()


def test_no_secret_in_repr_or_errors(recorder: Recorder) -> None:
    creds = Credentials("AKID", "very-secret-value", "very-secret-token")
    assert "very-secret" not in repr(creds) + repr(StaticSource(creds, "given"))
    recorder.status = 403
    st = S3Storage("bkt", "db", endpoint=recorder.endpoint, region="us-east-1", access_key_id="AKID",
                   secret_access_key="very-secret-value", max_attempts=1)
    with pytest.raises(StorageError) as exc:
        st.list_files(0)
    assert "very-secret" not in str(exc.value) + repr(st) + repr(st._client)
