"""A fresh process loads nothing on the way to its first rows that those rows do not need.

Each check runs in a new interpreter and looks at sys.modules after the first
query: SDKs cost 0.1-0.3 s each to import, so a directory replica must import
none, and an S3 replica with keys in the environment must not import
botocore (our client and signer replace it; botocore's credential chain is
imported only for the sources that need it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from replication import MotoS3
from synthetic import DirTarget, S3Target, SyntheticPrimary

ROOT = Path(__file__).resolve().parent.parent
SDKS = ("boto3", "botocore", "s3transfer", "google", "azure", "paramiko", "nats", "requests", "urllib3", "dateutil",
        "jmespath", "httpx", "asyncssh")

PROBE = """
import json, sys
import lsvfs
conn = lsvfs.connect(sys.argv[1], poll_interval=0)
rows = conn.execute("SELECT x FROM t").fetchall()
print(json.dumps({"rows": rows, "modules": sorted({m.split('.')[0] for m in sys.modules})}))
conn.close()
"""


def first_rows_modules(url: str, env: dict[str, str] | None = None) -> tuple[list[list[int]], set[str]]:
    out = subprocess.run([sys.executable, "-c", PROBE, url], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["rows"], set(got["modules"])


def make(target: DirTarget | S3Target) -> str:
    p = SyntheticPrimary(target, page_size=1024)
    p.commit("CREATE TABLE t(x); INSERT INTO t VALUES (7)")
    return p.url


def test_import_lsvfs_loads_no_sdk() -> None:
    out = subprocess.run([sys.executable, "-c", "import json, sys, lsvfs, lsvfs.storage; "
                          "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert not set(json.loads(out.stdout)) & set(SDKS)


def test_directory_replica_loads_no_sdk(tmp_path: Path) -> None:
    rows, modules = first_rows_modules(make(DirTarget(tmp_path / "replica")))
    assert rows == [[7]]
    assert not modules & set(SDKS), sorted(modules & set(SDKS))


@pytest.mark.s3
def test_s3_replica_with_env_keys_loads_no_sdk(moto_s3: MotoS3, s3_env: None, tmp_path: Path) -> None:
    url = make(S3Target(moto_s3, moto_s3.create_bucket("cold")))
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    rows, modules = first_rows_modules(url, env)
    assert rows == [[7]]
    assert not modules & set(SDKS), sorted(modules & set(SDKS))
