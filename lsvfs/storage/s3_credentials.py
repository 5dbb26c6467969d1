"""Where S3 credentials come from: the common sources read here, the rest through botocore.

A fresh process (a serverless function, a container, a cron job, `lsvfs
query`) most often has its keys in the environment, in ~/.aws files or at an
ECS/EKS container endpoint; reading those takes microseconds to a
millisecond, while importing botocore for its credential chain takes ~0.15 s.
So those sources are read here, in botocore's order, and any configuration
that needs more (assume-role, web identity, SSO, credential_process, EC2
instance metadata) goes to botocore's own chain,
imported only then, whose refreshing credentials are asked for before every
request. Nothing here ever puts a secret in a message or a repr().
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import StorageError
from .redact import scrub

log = logging.getLogger(__name__)

NEEDS_BOTOCORE = ("role_arn", "source_profile", "credential_source", "web_identity_token_file",
                  "credential_process", "sso_session", "sso_start_url", "sso_account_id", "sso_role_name",
                  "login_session")
"""Profile settings whose credentials only botocore's chain knows how to get."""
NO_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                       "LITESTREAM_ACCESS_KEY_ID/LITESTREAM_SECRET_ACCESS_KEY")


@dataclass(frozen=True)
class Credentials:
    """One set of keys; the secret and token never appear in repr()."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


class CredentialSource(Protocol):
    """Gives the credentials to sign the next request with (thread-safe)."""

    name: str

    def get(self) -> Credentials: ...


class StaticSource:
    """Keys that do not change for the life of the process."""

    def __init__(self, creds: Credentials, name: str) -> None:
        self.creds = creds
        self.name = name

    def get(self) -> Credentials:
        return self.creds

    def __repr__(self) -> str:
        return f"StaticSource({self.name})"


class BotocoreSource:
    """botocore's default credential chain, made on the first request.

    botocore's RefreshableCredentials refresh themselves (assume-role, SSO,
    ECS/EC2 metadata, credential_process with an expiry) before they expire;
    `get_frozen_credentials()` is its thread-safe way to read a consistent set."""

    name = "botocore's credential chain"

    def __init__(self, profile: str | None = None) -> None:
        self.profile = profile
        self._lock = threading.Lock()
        self._creds: Any = None

    def _chain(self) -> Any:
        with self._lock:
            if self._creds is None:
                import botocore.session  # only here: the one source that needs it

                log.debug("S3 credentials from botocore's chain (profile %s)", self.profile or "default")
                session = botocore.session.Session(profile=self.profile)
                creds = session.get_credentials()
                if creds is None:
                    raise StorageError(f"no usable AWS credentials (none found by any source); {NO_CREDENTIALS_HINT}")
                self._creds = creds
            return self._creds

    def get(self) -> Credentials:
        try:
            frozen = self._chain().get_frozen_credentials()
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - botocore's many failures (profile, STS, metadata) become one
            raise StorageError(f"no usable AWS credentials ({scrub(str(e), [])}); {NO_CREDENTIALS_HINT}") from e
        if not frozen.access_key or not frozen.secret_key:
            raise StorageError(f"no usable AWS credentials (incomplete); {NO_CREDENTIALS_HINT}")
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token or None)

    def __repr__(self) -> str:
        return f"BotocoreSource(profile={self.profile!r})"


CONTAINER_HOST = "http://169.254.170.2"
"""Where ECS serves AWS_CONTAINER_CREDENTIALS_RELATIVE_URI."""
_CONTAINER_HOSTS = ("169.254.170.2", "169.254.170.23", "fd00:ec2::23", "localhost")
REFRESH_BEFORE = 15 * 60.0
"""Ask for new container credentials this long before the old ones expire (botocore's advisory window)."""


class ContainerSource:
    """ECS task roles and EKS Pod Identity: credentials from the container endpoint.

    Read here rather than through botocore because a container that starts per
    request is exactly where botocore's import would be most of a cold start.
    The endpoint is AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (on ECS's
    169.254.170.2) or AWS_CONTAINER_CREDENTIALS_FULL_URI (https, or a loopback
    or ECS/EKS address, as the SDKs allow), with the Authorization token from
    AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (read at every fetch: it rotates)
    or AWS_CONTAINER_AUTHORIZATION_TOKEN. Credentials are fetched again once
    they are within 15 minutes of expiring; if that fails while the old ones
    are still valid, the old ones are used and the failure logged."""

    name = "container credentials endpoint"

    def __init__(self, url: str, env: Mapping[str, str], timeout: float = 2.0, attempts: int = 3) -> None:
        self.url = url
        self._token = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        self._token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        self.timeout = timeout
        self.attempts = attempts
        self._lock = threading.Lock()
        self._creds: Credentials | None = None
        self._expires = 0.0

    def get(self) -> Credentials:
        import time

        now = time.time()
        creds = self._creds
        if creds is not None and now < self._expires - REFRESH_BEFORE:
            return creds
        with self._lock:
            if self._creds is not None and time.time() < self._expires - REFRESH_BEFORE:
                return self._creds
            try:
                self._creds, self._expires = self._fetch()
            except StorageError:
                if self._creds is None or time.time() >= self._expires:
                    raise
                log.warning("refreshing container credentials failed; using the current ones until they expire",
                            exc_info=True)
            return self._creds

    def _fetch(self) -> tuple[Credentials, float]:
        import json
        import time

        headers = {"Accept": "application/json"}
        if self._token_file:
            try:
                with open(self._token_file) as fh:
                    headers["Authorization"] = fh.read().strip()
            except OSError as e:
                raise StorageError(f"no usable AWS credentials: cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE "
                                   f"({e.strerror})") from None
        elif self._token:
            headers["Authorization"] = self._token
        last = ""
        for attempt in range(self.attempts):
            try:
                status, body = _http_get(self.url, headers, self.timeout)
                if status == 200:
                    doc = json.loads(body)
                    creds = Credentials(str(doc["AccessKeyId"]), str(doc["SecretAccessKey"]),
                                        doc.get("Token") or None)
                    expires = doc.get("Expiration")
                    when = _parse_expiry(expires) if expires else time.time() + 3600.0
                    log.debug("container credentials fetched (expire in %.0f s)", when - time.time())
                    return creds, when
                last = f"HTTP {status}"
                if status < 500:
                    break
            except (OSError, ValueError, KeyError, TypeError) as e:
                last = type(e).__name__
            if attempt + 1 < self.attempts:
                time.sleep(min(1.0, 0.2 * 2 ** attempt))
        raise StorageError(f"no usable AWS credentials: the container credentials endpoint failed ({last})")

    def __repr__(self) -> str:
        return f"ContainerSource({self.url!r})"


def _http_get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """One GET by http.client (urllib.request would import far more for one request)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        import ssl

        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                           context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _parse_expiry(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(text).strip().replace("Z", "+00:00")).timestamp()


def container_url(env: Mapping[str, str]) -> str | None:
    """The container credentials URL the environment names, if the SDKs would accept it."""
    relative = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
    if relative:
        return CONTAINER_HOST + relative
    full = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if not full:
        return None
    from ipaddress import ip_address
    from urllib.parse import urlsplit

    parts = urlsplit(full)
    host = (parts.hostname or "").lower()
    allowed = parts.scheme == "https" or host in _CONTAINER_HOSTS
    if not allowed:
        try:
            allowed = ip_address(host).is_loopback
        except ValueError:
            allowed = False
    if not allowed:
        raise StorageError("AWS_CONTAINER_CREDENTIALS_FULL_URI must be https or a loopback or ECS/EKS address")
    return full


def _read_ini(path: str) -> Any:
    import configparser

    parser = configparser.RawConfigParser()
    try:
        parser.read(path)
    except configparser.Error as e:
        raise StorageError(f"cannot parse AWS config file {path}: {type(e).__name__}") from None
    return parser


def _profile_section(parser: Any, name: str, config_file: bool) -> dict[str, str] | None:
    """The profile's settings: `[name]` in the credentials file; `[profile name]` (or `[default]`) in config."""
    candidates = [name] if not config_file else ([f"profile {name}", name] if name == "default" else
                                                 [f"profile {name}"])
    for section in candidates:
        if parser.has_section(section):
            return {k.lower(): v.strip() for k, v in parser.items(section)}
    return None


def _static_from(settings: Mapping[str, str]) -> Credentials | None:
    key_id, secret = settings.get("aws_access_key_id"), settings.get("aws_secret_access_key")
    if key_id and secret:
        token = settings.get("aws_session_token") or settings.get("aws_security_token")
        return Credentials(key_id, secret, token or None)
    return None


def resolve(env: Mapping[str, str] | None = None, explicit: tuple[str, str] | None = None) -> CredentialSource:
    """The credential source botocore's chain would pick, read without botocore where we can.

    Order (botocore's): explicit keys (the caller's, or the LITESTREAM_* pair
    merged with AWS_* as Litestream does); AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN); then, unless web identity or
    the profile asks for more, static keys of the profile (AWS_PROFILE, else
    default) in the shared credentials file, then in the config file; then
    the ECS/EKS container endpoint; everything else (assume-role, SSO,
    credential_process, web identity, EC2 instance metadata) is botocore's chain."""
    env = os.environ if env is None else env
    aws_id, aws_secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    aws_token = env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN") or None
    if explicit is not None:
        key_id, secret = explicit
        token = aws_token if (key_id, secret) == (aws_id, aws_secret) else None
        return StaticSource(Credentials(key_id, secret, token), "given keys")
    if aws_id and aws_secret:
        return StaticSource(Credentials(aws_id, aws_secret, aws_token), "environment")
    profile = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or None
    if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or env.get("AWS_ROLE_ARN"):
        return BotocoreSource(profile)
    name = profile or "default"
    cred_path = os.path.expanduser(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials")
    conf_path = os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    in_creds = _profile_section(_read_ini(cred_path), name, False) if os.path.isfile(cred_path) else None
    in_conf = _profile_section(_read_ini(conf_path), name, True) if os.path.isfile(conf_path) else None
    if profile is not None and in_creds is None and in_conf is None:
        return BotocoreSource(profile)  # its "profile not found" error, or a profile only it can find
    settings = {**(in_conf or {}), **(in_creds or {})}
    if any(k in settings for k in NEEDS_BOTOCORE):
        return BotocoreSource(profile)
    for found, where in ((in_creds, "shared credentials file"), (in_conf, "config file")):
        creds = _static_from(found or {})
        if creds is not None:
            return StaticSource(creds, f"{where}, profile {name}")
    url = container_url(env)
    if url is not None:
        return ContainerSource(url, env)
    return BotocoreSource(profile)


def profile_region(env: Mapping[str, str] | None = None) -> str | None:
    """The region AWS's configuration names: AWS_REGION, AWS_DEFAULT_REGION, else the profile's `region`."""
    env = os.environ if env is None else env
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        return region
    conf_path = os.path.expanduser(env.get("AWS_CONFIG_FILE") or "~/.aws/config")
    if not os.path.isfile(conf_path):
        return None
    name = env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    settings = _profile_section(_read_ini(conf_path), name, True) or {}
    return settings.get("region") or None
