"""The chaos test's ledger and its oracle: the primary's state recorded per commit as the
run goes, so every read is checked against the truth at any run length, with no
restore of the whole history.

The ledger (40 accounts, a transfer counter `meta.n`, a log of the last `KEEP_LOG`
transfers) stays the same size however long the run, so a read costs the same at
minute ten as at second one. After each transfer commits, the primary's digest of
every table is recorded under its `n`; a reader's transaction reads every table
and its TXID, and must equal the primary's state at the `n` it read. One TXID is
one state: every TXID must show one `n` to every reader, and a larger TXID never
a smaller `n`. `litestream restore -txid` audits tie a TXID to its state without
lsvfs (tests/test_fuzz_stress_and_chaos.py).
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import apsw
from replication import ReplicatedPrimary

ACCOUNTS = 40
BALANCE = 1000
KEEP_LOG = 64
"""Log rows kept: older ones are deleted in the transfer that adds one."""
KEEP_STATES = 50_000
"""States remembered (a reader further behind than this fails as lagging): ~15 min at full speed."""
READS = ("SELECT id, bal FROM acct ORDER BY id", "SELECT n FROM meta", "SELECT id, hex(note) FROM log ORDER BY id")

LITESTREAM = {"snapshot_interval": "20s", "snapshot_retention": "60s", "l0_retention": "15s",
              "l0_retention_check_interval": "1s", "levels": ["1s", "5s"]}
"""Litestream settings that keep the replica the same size at any run length: snapshots every
20 s, older than 60 s deleted with the L1/L2 files below them, L0 files gone 15 s after their
compaction. So a poll's listing and a restore's chain are bounded by these, not by the run.
(With 5 s and 30 s, a restore of the TXID a lagging replica was at often found its L0 file
or the snapshot below it gone: "no matching backup files available", and the audit skipped.)"""


def state_of(conn: apsw.Connection) -> tuple[int, str]:
    """(n, digest of every table) as `conn` sees the ledger now (in its transaction, if any)."""
    acct, ((n,),), log = (conn.execute(sql).fetchall() for sql in READS)
    total = sum(int(b) for _, b in acct)  # type: ignore[arg-type, misc]
    if total != ACCOUNTS * BALANCE or len(acct) != ACCOUNTS:
        return int(n), f"broken: {len(acct)} accounts hold {total}"  # type: ignore[arg-type]
    return int(n), hashlib.sha256(repr((acct, n, log)).encode()).hexdigest()[:24]  # type: ignore[arg-type]


class Ledger:
    """The ledger on a real primary, with its state per transfer and the TXID -> n map readers build."""

    def __init__(self, p: ReplicatedPrimary, seed: int = 34) -> None:
        self.p = p
        self.rnd = random.Random(seed)
        self.n = 0
        self.states: dict[int, str] = {}
        self._lock = threading.Lock()
        self._txid_n: dict[int, int] = {}
        p.execute("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL);"
                  "CREATE TABLE meta(n INTEGER NOT NULL); CREATE TABLE log(id INTEGER PRIMARY KEY, note BLOB)")
        with p.transaction():
            p.executemany("INSERT INTO acct(bal) VALUES (?)", [(BALANCE,)] * ACCOUNTS)
            p.execute("INSERT INTO meta VALUES (0)")
        self.states[0] = state_of(p.conn)[1]

    def transfer(self) -> None:
        """One transaction: 7 from one account to another, n + 1, a log row, the oldest dropped."""
        a, b = self.rnd.sample(range(1, ACCOUNTS + 1), 2)
        p = self.p
        with p.transaction():
            p.execute("UPDATE acct SET bal = bal - 7 WHERE id = ?", (a,))
            p.execute("UPDATE acct SET bal = bal + 7 WHERE id = ?", (b,))
            p.execute("UPDATE meta SET n = n + 1")
            p.execute("INSERT INTO log(note) VALUES (randomblob(300))")
            p.execute("DELETE FROM log WHERE id <= (SELECT n FROM meta) - ?", (KEEP_LOG,))
            n, digest = state_of(p.conn)
        with self._lock:
            self.states[n] = digest
            self.states.pop(n - KEEP_STATES, None)
            self.n = n

    def check(self, what: str, txid: int, n: int, digest: str) -> str | None:
        """None if `digest` is the primary's state after transfer `n` and TXID `txid` has shown
        only `n` so far; else what is wrong."""
        with self._lock:
            want = self.states.get(n)
            seen = self._txid_n.setdefault(txid, n)
        if want is None:
            return f"{what}: TXID {txid:x} shows transfer {n}, which the primary never recorded (or too old)"
        if digest != want:
            return f"{what}: TXID {txid:x} shows transfer {n} with other rows than the primary had ({digest})"
        if seen != n:
            return f"{what}: TXID {txid:x} showed transfer {seen} before and transfer {n} now"
        return None

    def order_problems(self) -> list[str]:
        """TXIDs whose n is smaller than an earlier TXID's (a state from the past under a newer TXID)."""
        with self._lock:
            pairs = sorted(self._txid_n.items())
        out = []
        ns = [n for _, n in pairs]
        for i in range(1, len(pairs)):
            if ns[i] < ns[i - 1]:
                out.append(f"TXID {pairs[i][0]:x} shows transfer {ns[i]}, TXID {pairs[i - 1][0]:x} {ns[i - 1]}")
        return out[:5]

    def txids_seen(self) -> int:
        with self._lock:
            return len(self._txid_n)

    def n_at(self, txid: int) -> int | None:
        with self._lock:
            return self._txid_n.get(txid)


def restored_state(path: Path) -> tuple[int, str]:
    """The ledger state of a restored database file, read from memory (no -wal/-shm beside it)."""
    db = path.read_bytes()
    if db[18:20] == b"\x02\x02":  # an in-memory database cannot be in WAL mode
        db = db[:18] + b"\x01\x01" + db[20:]
    conn = apsw.Connection(":memory:")
    try:
        conn.deserialize("main", db)
        return state_of(conn)
    finally:
        conn.close()
