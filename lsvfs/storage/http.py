"""Pooled HTTP sessions for the HTTP backends (GCS, Azure, WebDAV).

The replica reads from a thread pool; requests' default pool keeps 10
connections per host and drops the rest after each request, so a pool as
wide as the replica's parallelism is what lets its concurrent ranged reads
reuse warm connections.
"""

from __future__ import annotations

from typing import Any

from .base import PARALLEL_REQUESTS

POOL_SIZE = PARALLEL_REQUESTS


def pooled_session(session: Any = None, pool_size: int = POOL_SIZE) -> Any:
    """`session` (or a new requests.Session) with wide http/https pools and no
    urllib3-level retries (each backend retries in its own SDK or above)."""
    import requests
    from requests.adapters import HTTPAdapter

    s = session if session is not None else requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s
