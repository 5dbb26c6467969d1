"""Every code block of README.md and docs/*.md runs, against a live replica, or says why not.

The blocks are written for a reader: their replica is `s3://my-bucket/app.db?region=eu-west-1`
(Python) or `./replica` (shell). Here they run in a directory whose `./replica` is a real
`litestream replicate` replica of a primary with `orders` and `events` tables, with these example
values replaced by that replica's (EXAMPLE_URL, EXAMPLE_TXID, EXAMPLE_TIMES). A block that cannot run
in a test follows an HTML comment `<!-- not run: reason -->`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from replication import ReplicatedPrimary

import lsvfs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
INTERNALS = ROOT / "docs" / "internals.md"
EXAMPLE_URL = "s3://my-bucket/app.db?region=eu-west-1"
EXAMPLE_TXID = "00000000000004d2"
EXAMPLE_TIMES = ("2024-01-02T03:04:05Z", "10 minutes ago")  # older than any test replica
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
RUNNABLE = ("python", "sh")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: str | None  # the reason, when the line before the fence gives one


def blocks(text: str) -> list[Block]:
    """Fenced blocks in order (``` or ```lang ... ```), with the `not run` reason just above each."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        reason = NOT_RUN.fullmatch(above.strip())
        out.append(Block(i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n", reason and reason.group(1)))
        i = end + 1
    return out


BLOCKS = blocks(README.read_text())
ALL_BLOCKS = [(README, b) for b in BLOCKS] + [(doc, b) for doc in DOCS for b in blocks(doc.read_text())]
"""Every block with the file it is in: the README's, then each page of docs/."""


def block_id(b: Block) -> str:
    return f"L{b.line}-{b.lang or 'text'}"


def located_id(located: tuple[Path, Block]) -> str:
    doc, b = located
    return block_id(b) if doc == README else f"{doc.stem}-{block_id(b)}"


def runnable(lang: str) -> list[tuple[Path, Block]]:
    return [(doc, b) for doc, b in ALL_BLOCKS if b.not_run is None and b.lang == lang]


def test_every_block_runs_or_says_why_not() -> None:
    """Each block is python or sh (run below) or carries a `not run` reason; the two commands stay first."""
    assert len(BLOCKS) >= 10
    unmarked = [block_id(b) for b in BLOCKS if b.not_run is None and b.lang not in RUNNABLE]
    assert not unmarked, f"blocks neither runnable nor marked `<!-- not run: reason -->`: {unmarked}"
    first = BLOCKS[0]
    assert first.lang == "sh" and README.read_text().index("```") == README.read_text().index("```sh\n# 1.")
    assert 'pip install -e ".[demo]" && lsvfs demo' in first.code
    assert sum(b.not_run is None for b in BLOCKS) >= 8  # most blocks really run


def test_every_docs_block_runs_or_says_why_not() -> None:
    """docs/ holds the reference and the internals, and each of their blocks is runnable or marked too."""
    assert {d.name for d in DOCS} >= {"reference.md", "internals.md"}
    unmarked = [located_id(x) for x in ALL_BLOCKS if x[0] != README and x[1].not_run is None
                and x[1].lang not in RUNNABLE]
    assert not unmarked, f"blocks neither runnable nor marked `<!-- not run: reason -->`: {unmarked}"
    assert sum(doc != README and b.not_run is None for doc, b in ALL_BLOCKS) >= 4


def test_readme_is_a_first_read() -> None:
    """Under 300 lines, pointing at the docs."""
    text = README.read_text()
    assert len(text.splitlines()) < 300
    assert "docs/reference.md" in text and "docs/internals.md" in text


def test_layout_names_every_file_once() -> None:
    """The layout in docs/internals.md lists each file of csrc/ and lsvfs/ (sources, headers,
    scripts) exactly once, and nothing that is not there."""
    listing = next(b for b in blocks(INTERNALS.read_text()) if "csrc/vfs.c" in b.code)
    named = [line.split()[0] for line in listing.code.splitlines() if line.strip()]
    tracked = {str(p.relative_to(ROOT)) for pattern in ("csrc/*.[ch]", "csrc/*.py", "csrc/*.sh", "lsvfs/**/*.py",
                                                        "lsvfs/*.pyi") for p in ROOT.glob(pattern)}
    assert len(named) == len(set(named)), "a file listed twice"
    assert sorted(set(named) - tracked) == [], "listed but not in the tree"
    assert sorted(tracked - set(named)) == [], "in the tree but not listed"


def test_blocks_are_parsed_with_their_reasons() -> None:
    """Control for the parser: a marked block gets its reason, an unmarked one none, ``` without a language too."""
    got = blocks("x\n<!-- not run: slow -->\n```sh\nlsvfs demo\n```\n\n```python\nprint(1)\n```\n```\nlisting\n```\n")
    assert got == [Block(3, "sh", "lsvfs demo\n", "slow"), Block(7, "python", "print(1)\n", None),
                   Block(10, "", "listing\n", None)]


@dataclass(frozen=True)
class Site:
    """Where the blocks run: cwd holds ./replica, a live replica of `primary`."""

    cwd: Path
    primary: ReplicatedPrimary
    txid: str
    time: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    p = ReplicatedPrimary(tmp_path_factory.mktemp("readme") / "p")
    try:
        p.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, total REAL)")
        p.execute("CREATE TABLE events(id INTEGER PRIMARY KEY, kind TEXT, payload BLOB)")
        p.executemany("INSERT INTO orders(customer, total) VALUES (?, ?)", [(f"c{i % 5}", i * 1.5) for i in range(40)])
        p.executemany("INSERT INTO events(kind, payload) VALUES (?, randomblob(50))",
                      [("order" if i % 3 else "refund",) for i in range(30)])
        txid = p.wait_replicated()
        db = lsvfs.connect(p.replica_url, poll_interval=0)
        (when,), = db.execute("PRAGMA litestream_time").fetchall()  # of the newest TXID, >= txid's
        db.close()
        yield Site(p.workdir, p, f"{txid:016x}", str(when))
    finally:
        p.close()


def substitute(code: str, site: Site) -> str:
    assert site.primary.replica_dir is not None
    code = code.replace(EXAMPLE_URL, site.primary.replica_url).replace(EXAMPLE_TXID, site.txid)
    for t in EXAMPLE_TIMES:
        code = code.replace(t, site.time)
    return code


def test_substitution_points_at_the_live_replica(site: Site) -> None:
    """The example values become the test replica's, which holds the README's tables."""
    code = substitute(f'lsvfs.connect("{EXAMPLE_URL}") {EXAMPLE_TXID} {" ".join(EXAMPLE_TIMES)}', site)
    assert code == f'lsvfs.connect("{site.primary.replica_url}") {site.txid} {site.time} {site.time}'
    assert site.primary.replica_dir == site.cwd / "replica"
    db = lsvfs.connect(str(site.cwd / "replica"), poll_interval=0)
    assert db.execute("SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM events)").fetchall() == [(40, 30)]
    db.close()


def run(args: list[str], site: Site) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(args, cwd=site.cwd, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("located", runnable("python"), ids=located_id)
def test_python_block_runs(located: tuple[Path, Block], site: Site) -> None:
    """The block, with the example values replaced, runs to the end in a fresh interpreter."""
    doc, block = located
    code = substitute(block.code, site)
    r = run([sys.executable, "-c", code], site)
    assert r.returncode == 0, f"{doc.name} line {block.line}:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("located", runnable("sh"), ids=located_id)
def test_sh_block_runs(located: tuple[Path, Block], site: Site) -> None:
    """Every command of the block succeeds (bash -e), against ./replica, and prints something."""
    doc, block = located
    code = substitute(block.code, site)
    r = run(["bash", "-euo", "pipefail", "-c", code], site)
    assert r.returncode == 0, f"{doc.name} line {block.line}:\n{code}\n--- stderr:\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), code
    assert "Traceback" not in r.stderr, r.stderr
