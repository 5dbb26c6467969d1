"""The `lsvfs` command: ls, restore, verify, demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from .errors import LsvfsError
from .plan import list_all
from .storage import open_storage
from .storage.redact import RedactingFilter, redact_url
from .timeutil import parse_time

log = logging.getLogger("lsvfs")


class ProgressBar:
    """A one-line bar on a terminal; silent when the stream is not one."""

    def __init__(self, label: str, stream: TextIO = sys.stderr) -> None:
        self.label = label
        self.stream = stream
        self.enabled = stream.isatty()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {frac:6.1%} {done / 1e6:.1f}/{total / 1e6:.1f} MB")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _txid(text: str) -> int:
    """TXIDs are shown in hex everywhere; accept hex with or without 0x, or decimal with a leading '#'."""
    t = text.strip().lower()
    try:
        return int(t[1:], 10) if t.startswith("#") else int(t.removeprefix("0x"), 16)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a TXID: {text!r} (hex, e.g. 0000000000000012)") from None


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_ls(args: argparse.Namespace) -> int:
    storage = open_storage(args.url)
    try:
        files = sorted(list_all(storage), key=lambda f: (f.level, f.min_txid, f.max_txid))
    finally:
        storage.close()
    print(f"{'level':>5}  {'min_txid':16}  {'max_txid':16}  {'size':>12}  modified")
    for f in files:
        when = f.modified.isoformat(timespec="seconds") if f.modified else "-"
        print(f"{f.level:>5}  {f.min_txid:016x}  {f.max_txid:016x}  {f.size:>12}  {when}")
    if not files:
        print("(no LTX files)", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .restore import restore

    res = restore(args.url, args.output, txid=args.txid, timestamp_ms=args.timestamp, force=args.force,
                  progress=ProgressBar("restoring"))
    state = "verified" if res.checksum_verified else "files verified; replica carries no rolling checksum"
    print(f"restored TXID {res.txid:016x} ({res.commit} pages of {res.page_size} bytes, "
          f"{len(res.files)} files) to {args.output}; checksum {res.checksum:016x} ({state})")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .restore import verify

    report = verify(args.url, progress=ProgressBar("verifying"))
    for f, reason in report.bad:
        print(f"BAD {f.name}: {reason}")
    if not report.ok:
        first, reason = report.bad[0]
        more = f" (and {len(report.bad) - 1} more)" if len(report.bad) > 1 else ""
        print(f"lsvfs verify: error: {len(report.bad)} of {report.files_checked} files failed verification: "
              f"{first.name}: {reason}{more}", file=sys.stderr)
        return 1
    end = "matches the post-apply checksum" if report.checksum_verified else "(no rolling checksum in files)"
    print(f"ok: {report.files_checked} files, {report.bytes_checked} bytes; latest TXID {report.txid:016x}, "
          f"database checksum {report.checksum:016x} {end}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lsvfs", description="Query and restore Litestream replicas.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ls", help="list the LTX files of a replica")
    s.add_argument("url", help="replica URL: a path, file://, s3://, gs://, abs://, sftp://, webdav[s]://, nats:// or oss://")
    s.set_defaults(func=cmd_ls)

    s = sub.add_parser("restore", help="rebuild the database from a replica")
    s.add_argument("url")
    s.add_argument("output", help="database file to write")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--txid", type=_txid, help="restore exactly this TXID (hex)")
    g.add_argument("--timestamp", type=_time, help="restore the state at this time (RFC 3339 or '5 minutes ago')")
    s.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("verify", help="check every file's checksum and the latest database checksum")
    s.add_argument("url")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("demo", help="live demo: a primary, real litestream replication, and replica queries")
    s.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    try:
        return int(args.func(args))
    except (LsvfsError, FileExistsError, OSError) as exc:
        print(f"lsvfs {args.command}: error: {redact_url(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lsvfs {args.command}: interrupted", file=sys.stderr)
        return 130

