"""Times as users write them: RFC 3339, relative ('5 minutes ago'), epoch ms."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone

_UNITS = {
    "ms": 0.001, "millisecond": 0.001, "s": 1, "sec": 1, "second": 1, "m": 60, "min": 60,
    "minute": 60, "h": 3600, "hr": 3600, "hour": 3600, "d": 86400, "day": 86400, "w": 604800, "week": 604800,
}
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s+ago\s*$", re.IGNORECASE)


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Milliseconds since the epoch, or ValueError naming the accepted forms."""
    s = text.strip()
    m = _RELATIVE.match(s)
    if m and m.group(2).lower() in _UNITS:
        now = time.time() * 1000 if now_ms is None else now_ms
        return int(now - float(m.group(1)) * _UNITS[m.group(2).lower()] * 1000)
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"cannot parse time {text!r}: use RFC 3339 (2024-01-02T03:04:05Z) "
                         "or a relative time such as '5 minutes ago'") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def format_time(ms: int) -> str:
    """RFC 3339 with milliseconds in UTC, as the Go VFS prints it."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
