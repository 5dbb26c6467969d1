"""AWS Signature Version 4 for S3 requests without a body (GET, HEAD).

Written from AWS's public specification so that signing a request costs a few
HMACs and no SDK import: botocore takes ~0.15 s to import and ~0.1 s to build
a client, most of a cold start on S3. The signing key depends only on the
secret, the day, the region and the service, so it is kept and reused until
one of those changes. Checked against botocore's signer in tests/test_s3_client.py.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
"""The payload hash of a request with no body: what every read-only S3 request sends."""
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"


def uri_encode(text: str, *, path: bool = False) -> str:
    """Percent-encode every byte but A-Z a-z 0-9 - _ . ~ (and / in a path), as SigV4 wants.

    S3 signs the path as sent, encoded once (no normalisation, no double encoding)."""
    return quote(text, safe="/~" if path else "~")


def canonical_query(params: list[tuple[str, str]]) -> str:
    """The query string both sent and signed: encoded pairs sorted by name, then value."""
    return "&".join(f"{k}={v}" for k, v in sorted((uri_encode(k), uri_encode(v)) for k, v in params))


class SigningKeys:
    """The derived signing key per (secret, date, region, service); thread-safe.

    A small dict, cleared when it grows: keys change daily, or with rotated credentials."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[tuple[str, str, str, str], bytes] = {}

    def get(self, secret: str, date: str, region: str, service: str) -> bytes:
        ident = (secret, date, region, service)
        key = self._keys.get(ident)
        if key is None:
            key = derive_key(secret, date, region, service)
            with self._lock:
                if len(self._keys) > 32:
                    self._keys.clear()
                self._keys[ident] = key
        return key


def derive_key(secret: str, date: str, region: str, service: str) -> bytes:
    """HMAC chain from "AWS4"+secret over the date (YYYYMMDD), region, service and "aws4_request"."""
    k = hmac.digest(("AWS4" + secret).encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        k = hmac.digest(k, part.encode(), "sha256")
    return k


def sign(method: str, path: str, query: str, headers: dict[str, str], *, access_key_id: str, signing_key: bytes,
         amz_date: str, region: str, service: str, payload_hash: str = EMPTY_SHA256) -> str:
    """The Authorization header value for a request.

    `path` is the encoded path as sent, `query` the canonical query string as
    sent (canonical_query), `headers` every header to sign (names in any case;
    it must hold host, x-amz-date and x-amz-content-sha256, and
    x-amz-security-token with temporary credentials). `amz_date` is
    YYYYMMDD'T'HHMMSS'Z' and its first 8 characters are the scope's date."""
    canon = sorted((name.lower(), " ".join(str(value).split())) for name, value in headers.items())
    signed = ";".join(name for name, _ in canon)
    canonical_request = "\n".join((
        method, path, query, "".join(f"{n}:{v}\n" for n, v in canon), signed, payload_hash))
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
