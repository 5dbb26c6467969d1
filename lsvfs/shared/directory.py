"""The shared directory itself: checked at open, its owner, and the leader's status.

Other processes serve what this directory holds, so it must be private to the
user (created 0700; one other users can write is refused) and belong to one
replica (`owner.json` names it: two replicas mirrored into one directory would
mix their files). The leader publishes `status.json` after every good poll;
followers take their lag from it, not from their own readdir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from ..errors import SharedDirError
from ..storage import parse_url
from ..storage.redact import redact_url

log = logging.getLogger(__name__)

OWNER = "owner.json"
STATUS = "status.json"
LOCK = "leader.lock"
TEMP_SUFFIX = ".tmp"
"""Names being written end so; none is an LTX name, so no listing ever shows one."""


def replica_key(url: str) -> str:
    """One string per replica however its URL is spelled, without its secrets
    (ReplicaURL's repr leaves out the password and secret parameters)."""
    return repr(parse_url(url))


def prepare(directory: str, url: str) -> Path:
    """The directory, created 0700 if missing, checked private and writable,
    and claimed for `url`; SharedDirError naming it otherwise."""
    root = Path(os.path.abspath(os.path.expanduser(directory)))
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = root.stat()
    except OSError as e:
        raise SharedDirError(f"shared_dir {root} cannot be created: {e.strerror or e}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise SharedDirError(f"shared_dir {root} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SharedDirError(f"shared_dir {root} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                             "they could change what every process serves; use a directory only you can "
                             f"write (chmod 700 {root})")
    if st.st_uid != os.geteuid():
        raise SharedDirError(f"shared_dir {root} belongs to uid {st.st_uid}, not to this user ({os.geteuid()})")
    _probe(root)
    _claim(root, url)
    return root


def _probe(root: Path) -> None:
    """Fail at open, naming the directory, when nothing can be written in it."""
    probe = root / f".probe-{os.getpid()}{TEMP_SUFFIX}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"lsvfs")
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SharedDirError(f"shared_dir {root} cannot be written: {e.strerror or e}") from e


def _claim(root: Path, url: str) -> None:
    """Write the owner file if there is none (link: the first writer wins
    whole), then check that it names this replica."""
    mine = {"replica": replica_key(url), "url": redact_url(url)}
    path = root / OWNER
    if not path.exists():
        tmp = root / f".{OWNER}.{os.getpid()}{TEMP_SUFFIX}"
        try:
            tmp.write_text(json.dumps(mine))
            with contextlib.suppress(FileExistsError):  # another process claimed it first: checked below
                os.link(tmp, path)
        except OSError as e:
            raise SharedDirError(f"shared_dir {root} cannot be written: {e.strerror or e}") from e
        finally:
            tmp.unlink(missing_ok=True)
    try:
        owner = json.loads(path.read_text())
        theirs = str(owner["replica"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SharedDirError(f"shared_dir {root}: {path} is unreadable or damaged ({e}); remove it, or the "
                             "directory, to start afresh") from e
    if theirs != mine["replica"]:
        raise SharedDirError(f"shared_dir {root} already mirrors replica {owner.get('url')}, not {mine['url']}: "
                             "use one shared_dir per replica")


def write_status(root: Path, status: dict[str, Any]) -> None:
    """Replace status.json whole (temp name, rename): a reader sees the old one or the new."""
    tmp = root / f".{STATUS}.{os.getpid()}{TEMP_SUFFIX}"
    tmp.write_text(json.dumps(status, sort_keys=True))
    os.replace(tmp, root / STATUS)


def read_status(root: Path) -> dict[str, Any] | None:
    """The leader's last status, or None when there is none (yet) or it is unreadable."""
    try:
        status = json.loads((root / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def poll_age(status: dict[str, Any] | None) -> float | None:
    """Seconds since the leader's last successful poll, by the wall clock every process shares."""
    if status is None or not isinstance(status.get("last_poll_ok"), (int, float)):
        return None
    return max(0.0, time.time() - float(status["last_poll_ok"]))
