"""Packaging: `python -m build` makes an sdist that builds from source and a
wheel that installs and runs in a fresh venv with no compiler at all.

The build runs with `--no-isolation` (the test venv already has setuptools,
wheel and cffi), so only the fresh venv's runtime dependencies come from the
package index. Marked `install`, outside the default run: `python -m pytest -m
install` (CI runs it, next to .ci/wheel).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from email.parser import Parser
from pathlib import Path

import pytest

pytestmark = pytest.mark.install

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "corpus"
C_SOURCES = ["status.c", "crc64.c", "lz4block.c", "pageindex.c", "frame.c", "pagetable.c"]
NO_COMPILER = {"CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path


def run(args: list[str | Path], *, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=timeout, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would let the repo or the test venv leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(extra)
    return env


def source_tree(dst: Path) -> Path:
    """A copy of the project's source files only (what a fresh clone has), so no build
    artefact of the working tree can end up in the packages."""
    try:
        names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True,
                               timeout=30).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        names = []
    if names and names != [""]:
        for name in filter(None, names):
            src = REPO / name
            if src.is_file():
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / name)
    else:
        shutil.copytree(REPO, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.o", ".pytest_cache",
            ".hypothesis", ".benchmarks", "_core.c"))
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """sdist and wheel from `python -m build` (the wheel is built from the unpacked sdist)."""
    src = source_tree(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], env=clean_env())
    sdists, wheels = list(out.glob("lsvfs-*.tar.gz")), list(out.glob("lsvfs-*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, list(out.iterdir())
    return Built(sdists[0], wheels[0])


def test_sdist_carries_the_c_sources(built: Built) -> None:
    """The sdist holds every C source, the header and the cffi build script, so it builds from source."""
    with tarfile.open(built.sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for c in C_SOURCES:
        assert f"csrc/{c}" in names
    for f in ("csrc/lsvfs_core.h", "csrc/build_core.py", "setup.py", "pyproject.toml", "README.md"):
        assert f in names, f
    assert not [n for n in names if n.endswith((".so", ".o"))]


def test_wheel_contents(built: Built) -> None:
    """The wheel holds the compiled core, the typing marker and the console script; no C sources."""
    with zipfile.ZipFile(built.wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert [n for n in names if n.startswith("lsvfs/_core") and n.endswith(".so")]
    assert {"lsvfs/py.typed", "lsvfs/cli.py", "lsvfs/__main__.py", "lsvfs/storage/s3.py"} <= names
    assert not [n for n in names if n.startswith("csrc/") or n.endswith((".c", ".h"))]
    assert "lsvfs = lsvfs.cli:run" in entry_points


def runtime_requirements(wheel: Path) -> list[str]:
    """Requires-Dist entries of the wheel that are not behind an extra."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(zf.read(n).decode() for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = Parser().parsestr(meta).get_all("Requires-Dist") or []
    return [r.split(";")[0].strip() for r in reqs if "extra ==" not in r]


@pytest.fixture(scope="module")
def fresh_venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A new venv (no system site-packages) with the wheel and its runtime deps installed, compiler disabled."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", venv], env=clean_env())
    py = venv / "bin" / "python"
    env = clean_env(**NO_COMPILER)
    run([py, "-m", "pip", "install", "--no-deps", built.wheel], env=env)
    reqs = runtime_requirements(built.wheel)
    assert {r.split(">")[0].split("=")[0] for r in reqs} >= {"apsw", "cffi", "lz4", "boto3"}, reqs
    # Binary wheels only: nothing may be compiled, and CC/CXX would fail if anything tried.
    run([py, "-m", "pip", "install", "--only-binary=:all:", *reqs], env=env, timeout=600)
    yield venv


def test_wheel_works_in_a_fresh_venv_without_a_compiler(fresh_venv: Path, tmp_path: Path) -> None:
    """In the fresh venv: lsvfs and its C core import from the venv, decode real litestream files,
    restore a replica through the console script, and serve SQL through the VFS."""
    rep = tmp_path / "replica"
    for name, level in (("p4096-L9-0000000000000001-0000000000000002.ltx", 9),
                        ("p4096-L0-0000000000000003-0000000000000003.ltx", 0)):
        d = rep / "ltx" / str(level)
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(CORPUS / name, d / name.split("-", 2)[2])
    py = fresh_venv / "bin" / "python"
    script = f"""
import apsw, lsvfs, lsvfs._core, sys
from lsvfs import ltx
assert lsvfs.__file__.startswith({str(fresh_venv)!r}), lsvfs.__file__
assert lsvfs._core.__file__.startswith({str(fresh_venv)!r}), lsvfs._core.__file__
d = ltx.decode(open({str(CORPUS / 'p512-L9-0000000000000001-0000000000000002.ltx')!r}, 'rb').read())
assert d.header.page_size == 512 and len(d.pages) == 512 * len(d.entries)
assert lsvfs._core.lib.lsvfs_lock_pgno(4096) == 0x40000000 // 4096 + 1
conn = lsvfs.connect({str(rep)!r}, poll_interval=0)
print(conn.execute("PRAGMA integrity_check").fetchall()[0][0], conn.execute("SELECT count(*) FROM t").fetchall()[0][0])
conn.close()
"""
    r = run([py, "-c", script], env=clean_env(**NO_COMPILER), cwd=tmp_path)
    status, count = r.stdout.split()
    assert status == "ok" and int(count) > 0

    out = tmp_path / "restored.db"
    r = run([fresh_venv / "bin" / "lsvfs", "restore", rep, out], env=clean_env(**NO_COMPILER), cwd=tmp_path)
    assert "restored TXID 0000000000000003" in r.stdout
    # The same bytes the development install restores.
    import lsvfs

    lsvfs.restore(str(rep), tmp_path / "dev.db")
    assert out.read_bytes() == (tmp_path / "dev.db").read_bytes()
    run([py, "-m", "lsvfs", "verify", rep], env=clean_env(**NO_COMPILER), cwd=tmp_path)


def test_no_compiler_setting_really_blocks_compiling(built: Built, tmp_path: Path) -> None:
    """Control: with the same settings a source build of the sdist fails at the compiler, so the fresh
    venv's installs really compiled nothing. (The `built` wheel, made from the sdist with the real
    compiler, is the positive half.)"""
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path, built.sdist]
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300,
                       env=clean_env(**NO_COMPILER), stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and not list(tmp_path.glob("*.whl")), r.stdout[-2000:]
    assert "command '/bin/false' failed" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as zf:
        return Parser().parsestr(next(zf.read(n).decode() for n in zf.namelist() if n.endswith(".dist-info/METADATA")))


def test_version_lives_in_lsvfs_init_only(built: Built) -> None:
    """pyproject.toml declares the version dynamic (read from lsvfs.__version__); the built packages,
    the installed metadata and the module all carry that one value."""
    import lsvfs

    pyproject = (REPO / "pyproject.toml").read_text()
    project = pyproject.split("\n[project]\n", 1)[1].split("\n[", 1)[0]
    assert 'dynamic = ["version"]' in project and not re.search(r"^version\s*=", project, re.MULTILINE)
    assert 'version = { attr = "lsvfs.__version__" }' in pyproject
    version = lsvfs.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert wheel_metadata(built.wheel)["Version"] == version
    assert built.wheel.name.startswith(f"lsvfs-{version}-") and built.sdist.name == f"lsvfs-{version}.tar.gz"
    assert importlib.metadata.version("lsvfs") == version


def test_wheel_declares_pythons_and_typing(built: Built) -> None:
    """Requires-Python >= 3.10, a classifier per supported CPython (3.10-3.13), Typing :: Typed; the
    wheel is tagged for the stable ABI (one wheel for all of them) and ships py.typed and the core's stub."""
    meta = wheel_metadata(built.wheel)
    assert meta["Requires-Python"] == ">=3.10"
    classifiers = set(meta.get_all("Classifier") or [])
    assert {f"Programming Language :: Python :: 3.{m}" for m in range(10, 14)} <= classifiers
    assert "Typing :: Typed" in classifiers
    assert built.wheel.name.split("-")[2:4] == ["cp310", "abi3"], built.wheel.name
    with zipfile.ZipFile(built.wheel) as zf:
        assert zf.read("lsvfs/py.typed") == (REPO / "lsvfs" / "py.typed").read_bytes()
        assert "lsvfs/_core.pyi" in zf.namelist()  # the C core's types, for checkers of code using lsvfs
