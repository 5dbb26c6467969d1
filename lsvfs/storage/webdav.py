"""WebDAV replicas: file `<path>/ltx/<level>/<min>-<max>.ltx` on a WebDAV server.

Plain HTTP through one pooled `requests` session (extra `lsvfs[webdav]`):
listing is one PROPFIND (Depth: 1) of the level's collection, reads are GETs
with a Range header. No WebDAV library is needed for that, and a pooled
session keeps connections warm across the replica's reader threads
(requests sessions are safe to share for plain requests like these); one
session per server, user and password serves every storage on that server
(lsvfs/storage/shared.py).

Basic auth from the URL (`webdav://user:password@host/path`), else
LITESTREAM_WEBDAV_USERNAME / LITESTREAM_WEBDAV_PASSWORD.

`webdavs://` checks the server's certificate against, in order: the CA file
or directory in `?ca=`, REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (requests' own
variables), SSL_CERT_FILE (what Litestream, a Go program, reads), else
certifi's bundle. `?skip-verify=true` turns the check off and says so in a
WARNING each time a storage is opened.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import warnings
import xml.etree.ElementTree as ET
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

import requests
from urllib3.exceptions import InsecureRequestWarning

from ..errors import MissingFileError, StorageError
from .base import FileInfo, check_range, exact, format_filename, infos_from_names, level_dir
from .http import InFlight, pooled_session
from .redact import scrub
from .shared import Lease, SharedClients, fingerprint, lease

if TYPE_CHECKING:
    from . import ReplicaURL

log = logging.getLogger(__name__)

TIMEOUT = (5.0, 30.0)
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
"""Environment variables naming a CA bundle, in the order they are looked at."""
_DAV = "{DAV:}"
_PROPFIND = (b'<?xml version="1.0" encoding="utf-8"?><d:propfind xmlns:d="DAV:"><d:prop>'
             b"<d:getcontentlength/><d:getlastmodified/><d:resourcetype/></d:prop></d:propfind>")


class WebDAVStorage:
    """Read-only client of a Litestream WebDAV replica."""

    local = False

    def __init__(self, host: str, path: str = "", *, port: int | None = None, tls: bool = False,
                 user: str | None = None, password: str | None = None, skip_verify: bool = False,
                 ca: str | None = None, clients: SharedClients | None = None) -> None:
        scheme = "https" if tls else "http"
        hostport = host if port is None else f"{host}:{port}"
        self.path = path.strip("/")
        self.base = f"{scheme}://{hostport}"
        self._shown = f"{'webdavs' if tls else 'webdav'}://{hostport}"
        self.url = f"{self._shown}/{self.path}"
        self._calls = InFlight(self.url)
        self._verify: bool | str = True
        """What every request passes as `verify`: False, a CA file/directory, or
        True (certifi). Always passed explicitly: requests would otherwise let
        REQUESTS_CA_BUNDLE override a session's verify=False."""
        if tls and skip_verify:
            self._verify = False
            log.warning("WebDAV %s: TLS certificate NOT verified (skip-verify=true); anyone between here and "
                        "the server can read and change this replica's data", self._shown)
            # urllib3 would warn on every request; the WARNING above says it once per storage.
            warnings.filterwarnings("ignore", message=f"Unverified HTTPS request is being made to host "
                                    f"'{re.escape(host)}'", category=InsecureRequestWarning)
        elif tls:
            self._verify = trusted_cas(ca, self._shown)
        user = user if user is not None else os.environ.get("LITESTREAM_WEBDAV_USERNAME") or None
        if password is None:
            password = os.environ.get("LITESTREAM_WEBDAV_PASSWORD") or None
        self._secrets = (password,)
        self._user = user

        def make() -> Any:
            session = pooled_session()
            if user is not None:
                session.auth = (user, password or "")
            session.verify = self._verify
            return session

        key = ("webdav", self.base, user, fingerprint(password), self._verify)
        self._lease: Lease[Any] = lease(clients, key, make, _close_session)
        self._session = self._lease.client

    @classmethod
    def from_url(cls, u: ReplicaURL, clients: SharedClients | None = None) -> WebDAVStorage:
        assert u.host is not None
        return cls(u.host, u.path, port=u.port, tls=u.scheme == "webdavs", user=u.user, password=u.password,
                   skip_verify=u.skip_verify, ca=u.param("ca"), clients=clients)

    def __repr__(self) -> str:
        return f"WebDAVStorage({self.url!r})"

    def _href(self, rel: str) -> str:
        return self.base + "/" + quote(rel)

    def file_path(self, info: FileInfo) -> str:
        return level_dir(self.path, info.level, "ltx") + format_filename(info.min_txid, info.max_txid)

    def list_files(self, level: int, min_txid: int = 0) -> list[FileInfo]:
        rel = level_dir(self.path, level, "ltx")
        resp = self._request("PROPFIND", rel, "list", headers={"Depth": "1", "Content-Type": "application/xml"},
                             data=_PROPFIND)
        if resp is None:  # 404: the level does not exist yet
            return []
        try:
            root = ET.fromstring(resp.content)
        except ET.ParseError as e:
            raise StorageError(f"{self._shown}/{rel}: list failed: unparsable PROPFIND answer: {e}") from None
        entries: list[tuple[str, int, datetime | None]] = []
        for r in root.iter(f"{_DAV}response"):
            href = r.findtext(f"{_DAV}href") or ""
            name = unquote(urlsplit(href).path).rstrip("/").rsplit("/", 1)[-1]
            prop = r.find(f"{_DAV}propstat/{_DAV}prop")
            if prop is None or prop.find(f"{_DAV}resourcetype/{_DAV}collection") is not None:
                continue
            size = int(prop.findtext(f"{_DAV}getcontentlength") or 0)
            mod = prop.findtext(f"{_DAV}getlastmodified")
            try:
                when = parsedate_to_datetime(mod) if mod else None
            except (TypeError, ValueError):
                when = None
            entries.append((name, size, when))
        return infos_from_names(level, entries, min_txid)

    def read(self, info: FileInfo, offset: int, length: int) -> bytes:
        check_range(offset, length)
        if length == 0:
            return b""
        rng = f"bytes={offset}-{offset + length - 1}"
        resp = self._request("GET", self.file_path(info), f"get {rng}", headers={"Range": rng}, info=info)
        assert resp is not None
        data: bytes = resp.content
        if resp.status_code == 200:  # server ignored Range: cut it out ourselves
            data = data[offset:offset + length]
        return exact(data, info, f"{self._shown}/{self.file_path(info)}", offset, length)

    def read_all(self, info: FileInfo) -> bytes:
        resp = self._request("GET", self.file_path(info), "get", info=info)
        assert resp is not None
        data: bytes = resp.content
        return exact(data, info, f"{self._shown}/{self.file_path(info)}")

    def _request(self, method: str, rel: str, op: str, *, headers: dict[str, str] | None = None,
                 data: bytes | None = None, info: FileInfo | None = None) -> Any:
        """The response, None for a 404 listing, or StorageError."""
        where = f"{self._shown}/{rel}"
        try:
            with self._calls.call():
                resp = self._session.request(method, self._href(rel), headers=headers, data=data, timeout=TIMEOUT,
                                             verify=self._verify)
        except requests.RequestException as e:
            if self._calls.closed:  # the cut of close() ended the request
                raise StorageError(f"{where}: {op} failed: storage closed") from None
            raise self._failure(e, where, op) from None
        if resp.status_code in (200, 206, 207):
            return resp
        if resp.status_code == 404:
            if info is None:
                return None
            raise MissingFileError(f"{info.name}: file not found: {where}")
        if resp.status_code in (401, 403):
            who = f"user {self._user!r}" if self._user else "no credentials"
            raise StorageError(f"{where}: {op} failed: HTTP {resp.status_code}: access denied ({who}; set "
                               "webdav://user:password@host or LITESTREAM_WEBDAV_USERNAME/PASSWORD)")
        if resp.status_code == 416:
            raise StorageError(f"{where}: {op} failed: HTTP 416: range not satisfiable (file smaller than "
                               "expected)")
        raise StorageError(f"{where}: {op} failed: HTTP {resp.status_code} {resp.reason}")

    def _failure(self, e: requests.RequestException, where: str, op: str) -> StorageError:
        if isinstance(e, requests.exceptions.SSLError):
            return StorageError(f"{where}: {op} failed: {tls_failure(e)}")
        if isinstance(e, requests.ConnectionError):
            return StorageError(f"{where}: {op} failed: endpoint unreachable ({self.base}): {type(e).__name__}")
        if isinstance(e, requests.Timeout):
            return StorageError(f"{where}: {op} failed: timed out talking to {self.base}")
        return StorageError(f"{where}: {op} failed: {scrub(str(e), self._secrets)}")

    def close(self) -> None:
        """End this storage's requests in flight (never those of others sharing
        the session), then let go of the session; the last storage on it closes
        its connections."""
        self._calls.cut()
        self._lease.close()


def _close_session(session: Any) -> None:
    session.close()


def trusted_cas(ca: str | None, shown: str) -> bool | str:
    """The `verify` for a webdavs:// server: `?ca=`, else the first CA_VARIABLES
    set, else True (certifi). A named CA that is not there is a StorageError
    now, rather than a puzzling handshake failure at the first request."""
    source = "?ca="
    if not ca:
        for var in CA_VARIABLES:
            if os.environ.get(var):
                ca, source = os.environ[var], var
                break
    if not ca:
        return True
    ca = os.path.expanduser(ca)
    if not os.path.exists(ca):
        raise StorageError(f"{shown}: CA file {ca!r} (from {source}) does not exist")
    log.debug("WebDAV %s: trusting the CA in %s (from %s)", shown, ca, source)
    return ca


def tls_failure(e: BaseException) -> str:
    """What went wrong in a TLS handshake, in words a person can act on."""
    err = _ssl_cause(e)
    if isinstance(err, ssl.SSLCertVerificationError):
        why = err.verify_message or err.reason or "certificate verify failed"
        return (f"TLS certificate rejected ({why}); name its CA with ?ca=FILE or REQUESTS_CA_BUNDLE, "
                "or set ?skip-verify=true to skip the check")
    if err is not None:
        return f"TLS handshake failed ({err.reason or type(err).__name__}); is this server speaking HTTPS?"
    return f"TLS handshake failed ({type(e).__name__})"


def _ssl_cause(e: BaseException) -> ssl.SSLError | None:
    """The ssl module's error under requests' and urllib3's wrappers, if any."""
    todo, seen = [e], set()
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLError):
            return err
        inner = (getattr(err, "reason", None), *err.args, err.__cause__, err.__context__)
        todo.extend(x for x in inner if isinstance(x, BaseException))
    return None
