"""Redaction: the one place that decides what of a replica URL is secret.

A replica URL may carry a password (`sftp://u:pw@host`, `webdav://u:pw@host`),
a SAS token or key (`abs://…?sas-token=…`, `…?account-key=…`) or S3-style
secret parameters. Anything shown to a person — an error message, a log line,
`lsvfs ls` output, a `repr()` — goes through `redact_url` (or `scrub`, for
text that may quote a secret some other way, such as an SDK's exception).

It works on any text, not only on a well-formed URL, so it is safe to apply
to a message that merely contains a URL, and to a URL that failed to parse.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import quote

MASK = "***"

# user:password@ in any scheme://authority (the user name stays: it helps).
_USERINFO = re.compile(r"(?P<pre>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*):(?P<pw>[^/?#@\s]*)@")
# Query parameters whose value is a credential. Matched on the lower-cased
# name with -, _ removed: password, secret, token, sig (SAS), accountkey,
# sharedkey, credential(s), auth, apikey, seed, nkey, jwt.
_SECRET_PARAM = re.compile(
    r"(?P<pre>[?&;](?P<name>[A-Za-z0-9_.-]+)=)(?P<val>[^&#\s'\"]*?)(?=$|[&#\s'\"]|[:,;.)]\s|[:,;.)]$)"
)
_SECRET_WORDS = ("password", "passwd", "secret", "token", "accountkey", "sharedkey", "credential",
                 "auth", "apikey", "privatekey", "seed", "nkey", "jwt")
_SECRET_EXACT = {"sig", "pass", "pw", "sas", "signature", "xamzsignature", "xamzsecuritytoken"}


def _is_secret_param(name: str) -> bool:
    n = name.lower().replace("-", "").replace("_", "").replace(".", "")
    return n in _SECRET_EXACT or any(w in n for w in _SECRET_WORDS)


def redact_url(text: str) -> str:
    """`text` with every URL password and secret query value replaced by ***.

    `sftp://me:pw@h/p` → `sftp://me:***@h/p`;
    `abs://c/p?sas-token=sv%3D…` → `abs://c/p?sas-token=***`. Non-secret
    parts (host, path, endpoint, region, a key *file* path) stay, since
    they are what a person needs to fix a wrong URL.
    """
    if not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m.group('pre')}:{MASK}@", text)

    def param(m: re.Match[str]) -> str:
        if _is_secret_param(m.group("name")) and m.group("val"):
            return m.group("pre") + MASK
        return m.group(0)

    return _SECRET_PARAM.sub(param, out)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """`redact_url(text)` with each known secret value also masked wherever
    it appears (an SDK may echo a password or token in its own words)."""
    out = redact_url(text)
    values = {s for s in secrets if s and len(s) >= 3}
    values |= {quote(s, safe="") for s in values}
    for s in sorted(values, key=len, reverse=True):
        out = out.replace(s, MASK)
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's message through `redact_url`.

    The CLI installs it on its handlers, so even a log line from a layer that
    quotes a raw URL shows no credential; applications can do the same.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_url(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True
