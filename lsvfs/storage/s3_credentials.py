"""Where S3 credentials come from: the common sources read here, the rest through botocore.

A fresh process (a serverless function, a cron job, `lsvfs query`) most often
has its keys in the environment or in ~/.aws files; reading those takes
microseconds, while importing botocore for its credential chain takes ~0.15 s.
So those sources are read here, in botocore's order, and any configuration
that needs more (assume-role, web identity, SSO, credential_process, ECS or
EC2 metadata, credentials that refresh) goes to botocore's own chain,
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
    default) in the shared credentials file, then in the config file;
    everything else (assume-role, SSO, credential_process, web identity, ECS
    and EC2 metadata) is botocore's chain."""
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
