"""Replica options, from keywords, URI parameters or the environment.

Precedence, highest first: a keyword to `connect()` or a URI parameter
(`connect()` turns keywords into URI parameters), then the `LSVFS_*`
environment variable, then the default. Options belong to the shared
Replica, so the first connection to a URL sets them for all.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote


class Verify(str, enum.Enum):
    """How much of what storage returns is proven before SQLite sees it. A str,
    so code comparing with "frames" / "files" keeps working."""

    FRAMES = "frames"
    """Structural checks on every frame served (pgno, flags, size, LZ4 block)."""
    FILES = "files"
    """Every LTX file read whole and its CRC-64 checked before any page of it is served."""

    def __str__(self) -> str:
        return self.value


class Prefetch(str, enum.Enum):
    """Whether a replica fetches its whole snapshot into the cache in the background."""

    AUTO = "auto"
    """On remote storage, when the snapshot fits the cache."""
    ON = "on"
    """Also for larger databases, up to the cache budget."""
    OFF = "off"

    def __str__(self) -> str:
        return self.value


VERIFY_MODES = tuple(m.value for m in Verify)
PREFETCH_MODES = tuple(m.value for m in Prefetch)


def parse_duration(text: str | float | int) -> float:
    """Seconds from 1.5, '1.5', '250ms', '2s', '1m'."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", str(text))
        if not m:
            raise ValueError(f"not a duration: {text!r} (e.g. 1.5, 250ms, 2s)")
        value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if value < 0:
        raise ValueError(f"duration must not be negative: {text!r}")
    return value


def parse_size(text: str | int) -> int:
    """Bytes from 1048576, '64MiB', '64MB', '512k'."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise ValueError(f"not a size: {text!r} (e.g. 67108864, 64MiB)")
        unit = (m.group(2) or "b").lower().rstrip("b").rstrip("i")
        value = int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit]
    if value < 0:
        raise ValueError(f"size must not be negative: {text!r}")
    return value


def parse_verify(text: str) -> Verify:
    mode = str(text).strip().lower()
    if mode not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {text!r}")
    return Verify(mode)


def parse_prefetch(text: str | bool) -> Prefetch:
    mode = str(text).strip().lower()
    mode = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(mode, mode)
    if mode not in PREFETCH_MODES:
        raise ValueError(f"prefetch must be one of {', '.join(PREFETCH_MODES)}, not {text!r}")
    return Prefetch(mode)


def parse_bool(text: str | bool | int) -> bool:
    if isinstance(text, (bool, int)):
        return bool(text)
    word = str(text).strip().lower()
    if word in ("1", "true", "on", "yes"):
        return True
    if word in ("0", "false", "off", "no", ""):
        return False
    raise ValueError(f"not a boolean: {text!r} (on/off, true/false, 1/0)")


def _positive_int(text: str | int) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must not be negative: {text!r}")
    return value


@dataclass(frozen=True)
class Options:
    poll_interval: float = 1.0
    """Seconds between polls for new LTX files."""
    cache_size: int = 64 << 20
    """Bytes of decoded pages kept per replica."""
    open_timeout: float = 0.0
    """Seconds an empty replica is waited on at open before failing."""
    verify: Verify = Verify.FRAMES
    """'frames': structural checks on every frame; 'files': whole-file CRC-64 before serving."""
    read_retries: int = 4
    """Retries of a failed storage read before the query fails."""
    readahead: int = 64
    """Pages a sequential reader's request grows to before parallel read-ahead windows take over."""
    prefetch: Prefetch = Prefetch.AUTO
    """'auto': fetch the whole snapshot into the cache right after open when it fits
    (remote storage only); 'on': also for larger databases, up to the cache budget; 'off'."""
    hydration: bool = False
    """Copy the replica to a local file in the background and serve reads from it."""
    hydration_path: str | None = None
    """The hydration file (kept across restarts); implies hydration. Without it a private
    temp file is used and removed at close."""
    wait_timeout: float = 5.0
    """Seconds a read waits for the replica to reach its floor (PRAGMA litestream_min_txid,
    a read-your-writes bookmark) before failing with SQLite's busy code."""
    shared_dir: str | None = None
    """A directory the processes on one host share: one of them (the leader) polls storage and
    mirrors the LTX files there; every process reads the mirror (lsvfs/shared/)."""


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "poll_interval": parse_duration,
    "cache_size": parse_size,
    "open_timeout": parse_duration,
    "verify": parse_verify,
    "read_retries": _positive_int,
    "readahead": _positive_int,
    "prefetch": parse_prefetch,
    "hydration": parse_bool,
    "hydration_path": str,
    "wait_timeout": parse_duration,
    "shared_dir": str,
}
NAMES = tuple(f.name for f in fields(Options))


GO_NAMES = {"hydration_enabled": "hydration"}
"""The Go VFS's names for our options, accepted wherever ours are."""
GO_ENV = {"hydration": "LITESTREAM_HYDRATION_ENABLED", "hydration_path": "LITESTREAM_HYDRATION_PATH"}
"""The Go VFS's environment variables, read after ours."""


def env_name(option: str) -> str:
    return "LSVFS_" + option.upper()


def from_params(params: Mapping[str, str]) -> dict[str, str]:
    """Options among URI parameters (the Go VFS's names too: resolve() maps them)."""
    return {k: v for k, v in params.items() if k in NAMES or k in GO_NAMES}


def resolve(given: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Options:
    """Options from explicit values (keywords/URI) over the environment over defaults."""
    environ = os.environ if environ is None else environ
    given = {GO_NAMES.get(k, k): v for k, v in given.items()}
    unknown = set(given) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}")
    values: dict[str, Any] = {}
    for name in NAMES:
        raw = given.get(name)
        source = name
        for var in (env_name(name), GO_ENV.get(name)):
            if raw is None and var is not None and environ.get(var):
                raw, source = environ[var], var
        if raw is None:
            continue
        try:
            values[name] = _PARSERS[name](raw)
        except ValueError as exc:
            raise ValueError(f"option {source}: {exc}") from None
    return Options(**values)


REPLICA_PARAMS = ("replica", "replica_url")
"""URI parameters naming the replica: ours, and the Go VFS's."""
_GO_S3_ENV = (("LITESTREAM_S3_ENDPOINT", "endpoint"), ("LITESTREAM_S3_REGION", "region"),
              ("LITESTREAM_S3_FORCE_PATH_STYLE", "force-path-style"), ("LITESTREAM_S3_SKIP_VERIFY", "skip-verify"))


def replica_url(params: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The replica to open: a URI parameter (`replica`, or the Go VFS's
    `replica_url`), else LITESTREAM_REPLICA_URL, else an s3:// URL made from
    the Go VFS's LITESTREAM_S3_BUCKET / _PATH / _ENDPOINT / _REGION /
    _FORCE_PATH_STYLE / _SKIP_VERIFY, so its environment works unchanged."""
    environ = os.environ if environ is None else environ
    for name in REPLICA_PARAMS:
        if params and params.get(name):
            return params[name]
    if environ.get("LITESTREAM_REPLICA_URL"):
        return environ["LITESTREAM_REPLICA_URL"]
    bucket = environ.get("LITESTREAM_S3_BUCKET")
    if not bucket:
        return None
    path = environ.get("LITESTREAM_S3_PATH", "").strip("/")
    query = "&".join(f"{param}={quote(environ[var], safe='')}" for var, param in _GO_S3_ENV if environ.get(var))
    return f"s3://{bucket}/{path}" + (f"?{query}" if query else "")
