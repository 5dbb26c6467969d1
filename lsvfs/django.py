"""Read your writes in Django: a bookmark cookie after a write, a floor on the replica before reads.

Add `lsvfs.django.BookmarkMiddleware` to MIDDLEWARE and say where things are:

    LSVFS_BOOKMARKS = {
        "primary": "/data/app.db",                  # the database Litestream replicates
        "socket": "/var/run/litestream.sock",       # Litestream's control socket
        "replica": "replica",                       # the DATABASES alias reading the replica
    }

A request that may have written (any method but GET, HEAD, OPTIONS, TRACE)
and succeeded gets the primary's bookmark in a cookie; a later request
carrying it has the replica connection read at least that TXID (waiting up
to its wait_timeout), so the user sees what they saved. Optional keys:
"cookie" (its name, "lsvfs_bookmark") and "max_age" (seconds, 60: by then
any replica has caught up on its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .bookmark import bookmark
from .ltx import parse_txid

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
DEFAULTS: dict[str, Any] = {"socket": "/var/run/litestream.sock", "replica": "replica", "cookie": "lsvfs_bookmark",
                            "max_age": 60}


class BookmarkMiddleware:
    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        from django.conf import settings
        from django.core.exceptions import ImproperlyConfigured

        self.get_response = get_response
        conf = {**DEFAULTS, **getattr(settings, "LSVFS_BOOKMARKS", {})}
        if not conf.get("primary"):
            raise ImproperlyConfigured("LSVFS_BOOKMARKS['primary'] must name the primary database file")
        self.primary = str(conf["primary"])
        self.socket = str(conf["socket"])
        self.alias = str(conf["replica"])
        self.cookie = str(conf["cookie"])
        self.max_age = int(conf["max_age"])

    def __call__(self, request: Any) -> Any:
        floor = self._floor(request.COOKIES.get(self.cookie))
        if floor:
            self._set_floor(floor)
        try:
            response = self.get_response(request)
        finally:
            if floor:
                self._set_floor(0)  # a kept connection serves other users next
        if request.method not in SAFE_METHODS and response.status_code < 400:
            response.set_cookie(self.cookie, bookmark(self.primary, socket=self.socket), max_age=self.max_age,
                                httponly=True, samesite="Lax")
        return response

    @staticmethod
    def _floor(cookie: str | None) -> int:
        if not cookie:
            return 0
        try:
            return parse_txid(cookie)
        except ValueError:
            log.debug("ignoring a bookmark cookie that is no TXID: %r", cookie[:40])
            return 0

    def _set_floor(self, txid: int) -> None:
        from django.db import connections

        with connections[self.alias].cursor() as cursor:
            cursor.execute(f"PRAGMA litestream_min_txid = '{txid:016x}'")
