"""The Python data stack on a live replica: SQLAlchemy, Django, pandas and Flask.

Each recipe reads a real `litestream replicate` replica through the standard
library's sqlite3 (`lsvfs.uri`), checks the rows equal the primary's, follows
the primary (write, replicate, read again) and refuses writes. The
read-your-writes recipes (Django's BookmarkMiddleware, Flask with
SQLAlchemy) take bookmarks from Litestream's control socket and read from a
replica polling every 10 s: what a user just saved shows at once.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from replication import ReplicatedPrimary, wait_until
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import lsvfs

ORDERS = "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total REAL NOT NULL)"


def add_orders(p: ReplicatedPrimary, first: int, n: int) -> int:
    """Insert orders first..first+n-1 on the primary; return the TXID the replica then reaches."""
    p.executemany("INSERT INTO orders VALUES (?, ?, ?)",
                  [(i, f"c{i % 7}", i * 1.25) for i in range(first, first + n)])
    return p.wait_replicated()


def primary_orders(p: ReplicatedPrimary) -> list[tuple[Any, ...]]:
    return p.execute("SELECT id, customer, total FROM orders ORDER BY id")


def follow(read: Callable[[], list[tuple[Any, ...]]], want: list[tuple[Any, ...]]) -> None:
    """Bounded wait until the replica's next reads return `want` (the poller has to see the new files)."""
    wait_until(lambda: read() == want, 15, interval=0.05, what="replica follows the primary")


@pytest.fixture
def orders(file_primary: ReplicatedPrimary) -> ReplicatedPrimary:
    file_primary.execute(ORDERS)
    add_orders(file_primary, 1, 50)
    return file_primary


def replica_creator(url: str) -> Callable[[], sqlite3.Connection]:
    return lambda: sqlite3.connect(lsvfs.uri(url, poll_interval="50ms"), uri=True, check_same_thread=False)


# ---------------------------------------------------------------------------
# SQLAlchemy


class Base(DeclarativeBase):
    pass


class OrderRow(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str]
    total: Mapped[float]


def test_sqlalchemy_engine_reads_follows_and_refuses_writes(orders: ReplicatedPrimary) -> None:
    """Core and ORM reads through an engine equal the primary's rows, follow it, and writes fail read-only."""
    engine = sa.create_engine("sqlite://", creator=replica_creator(orders.replica_url))
    try:
        def read() -> list[tuple[Any, ...]]:
            with Session(engine) as s:
                return [(o.id, o.customer, o.total) for o in s.scalars(sa.select(OrderRow).order_by(OrderRow.id))]

        assert read() == primary_orders(orders) and len(read()) == 50
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM orders WHERE customer = :c"), {"c": "c3"}).scalar() == \
                orders.execute("SELECT count(*) FROM orders WHERE customer = 'c3'")[0][0]
            assert c.execute(sa.text("PRAGMA litestream_txid")).scalar() == f"{orders.last_txid:016x}"

        add_orders(orders, 51, 10)
        follow(read, primary_orders(orders))
        assert len(read()) == 60

        with Session(engine) as s, pytest.raises(sa.exc.OperationalError, match="readonly database"):
            s.add(OrderRow(id=1000, customer="x", total=1.0))
            s.commit()
        with engine.begin() as c, pytest.raises(sa.exc.OperationalError, match="readonly database"):
            c.execute(sa.text("DELETE FROM orders"))
        assert len(read()) == 60
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------
# pandas


def test_pandas_read_sql_through_sqlite3_and_sqlalchemy(orders: ReplicatedPrimary) -> None:
    """pd.read_sql on a replica (a sqlite3 connection, and an engine) equals the primary's rows and follows it."""
    query = "SELECT id, customer, total FROM orders ORDER BY id"
    db = sqlite3.connect(lsvfs.uri(orders.replica_url, poll_interval="50ms"), uri=True)
    engine = sa.create_engine("sqlite://", creator=replica_creator(orders.replica_url))
    try:
        want = primary_orders(orders)
        for con in (db, engine):
            df = pd.read_sql(query, con)
            assert list(df.columns) == ["id", "customer", "total"]
            assert list(df.itertuples(index=False, name=None)) == want
        assert pd.read_sql("SELECT customer, sum(total) AS s FROM orders GROUP BY customer", engine) \
            .set_index("customer")["s"].to_dict() == \
            dict(orders.execute("SELECT customer, sum(total) FROM orders GROUP BY customer"))

        add_orders(orders, 51, 5)
        want = primary_orders(orders)
        follow(lambda: list(pd.read_sql(query, db).itertuples(index=False, name=None)), want)
        follow(lambda: list(pd.read_sql(query, engine).itertuples(index=False, name=None)), want)

        with pytest.raises(pd.errors.DatabaseError) as e:  # pandas wraps sqlite3's error
            pd.DataFrame({"id": [999], "customer": ["x"], "total": [1.0]}).to_sql(
                "orders", db, if_exists="append", index=False)
        assert isinstance(e.value.__cause__, sqlite3.OperationalError)
        assert "readonly database" in str(e.value.__cause__)
        assert len(pd.read_sql(query, db)) == 55
    finally:
        db.close()
        engine.dispose()


# ---------------------------------------------------------------------------
# Django

SLOW_POLL = 10.0
"""poll_interval of the read-your-writes replicas: without a bookmark, a write shows only after it."""

SHOP_MODELS = '''
from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=40)
    total = models.FloatField()


class Note(models.Model):
    text = models.TextField()
'''

ROUTER = '''
class ReplicaRouter:
    """Reads of shop.Order go to the replica; every write goes to the primary ("default")."""

    def db_for_read(self, model, **hints):
        return "replica" if model._meta.label == "shop.Order" else "default"

    def db_for_write(self, model, **hints):
        return "default"

    def allow_relation(self, a, b, **hints):
        return True
'''


@pytest.fixture(scope="module")
def django_shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedPrimary]:
    """Django configured once for this process: "default" is the primary's own file, "replica"
    reads its Litestream replica, a router sends reads of shop.Order to the replica."""
    django = pytest.importorskip("django")
    from django.conf import settings

    if settings.configured:
        pytest.skip("Django is already configured in this process")
    app = tmp_path_factory.mktemp("djangoapp")
    (app / "shop").mkdir()
    (app / "shop" / "__init__.py").write_text("")
    (app / "shop" / "models.py").write_text(SHOP_MODELS)
    (app / "shop" / "routers.py").write_text(ROUTER)
    sys.path.insert(0, str(app))
    p = ReplicatedPrimary(tmp_path_factory.mktemp("django") / "p", control_socket=True)
    assert p.replica_dir is not None
    slow = p.workdir / "replica-slow"  # the same replica by another path: a Replica of its own
    slow.symlink_to(p.replica_dir, target_is_directory=True)
    try:
        settings.configure(
            INSTALLED_APPS=["shop"],
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(p.db_path)},
                "replica": {"ENGINE": "django.db.backends.sqlite3",
                            "NAME": lsvfs.uri(p.replica_url, poll_interval="50ms")},
                "bookmarked": {"ENGINE": "django.db.backends.sqlite3",
                               "NAME": lsvfs.uri(str(slow), poll_interval=SLOW_POLL)},
            },
            LSVFS_BOOKMARKS={"primary": str(p.db_path), "socket": p.socket_path, "replica": "bookmarked"},
            DATABASE_ROUTERS=["shop.routers.ReplicaRouter"],
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
            USE_TZ=True,
        )
        django.setup()
        from django.db import connections
        from shop.models import Note, Order

        with connections["default"].schema_editor() as editor:
            editor.create_model(Order)
            editor.create_model(Note)
        yield p
        connections.close_all()
    finally:
        sys.path.remove(str(app))
        p.close()


def test_django_router_reads_the_replica_and_writes_the_primary(django_shop: ReplicatedPrimary) -> None:
    """ORM reads of Order come from the replica and equal the primary's rows; ORM writes go to the
    primary and show up on the replica; a write sent to the replica fails read-only."""
    from django.db import OperationalError, connections, router, transaction
    from django.db.models import Count, Sum
    from shop.models import Note, Order

    p = django_shop
    assert router.db_for_read(Order) == "replica" and router.db_for_read(Note) == "default"
    Order.objects.bulk_create([Order(customer=f"c{i % 4}", total=i * 2.5) for i in range(1, 41)])
    Note.objects.create(text="not replicated reads")
    p.wait_replicated()

    def replica_rows() -> list[tuple[Any, ...]]:
        return list(Order.objects.order_by("id").values_list("id", "customer", "total"))

    want = p.execute("SELECT id, customer, total FROM shop_order ORDER BY id")
    follow(replica_rows, want)
    assert len(want) == 40
    assert Order.objects.all().db == "replica" and Note.objects.all().db == "default"
    assert connections["replica"].vendor == "sqlite"
    with connections["replica"].cursor() as c:
        c.execute("PRAGMA litestream_txid")
        assert int(c.fetchone()[0], 16) >= (p.last_txid or 1)
    per_customer = dict(Order.objects.values_list("customer").annotate(n=Count("id")).order_by())
    assert per_customer == dict(p.execute("SELECT customer, count(*) FROM shop_order GROUP BY 1"))
    assert Order.objects.aggregate(s=Sum("total"))["s"] == p.execute("SELECT sum(total) FROM shop_order")[0][0]

    Order.objects.create(customer="late", total=99.0)  # routed to the primary
    Order.objects.filter(customer="c0").update(total=0.0)
    p.wait_replicated()
    follow(replica_rows, p.execute("SELECT id, customer, total FROM shop_order ORDER BY id"))
    assert Order.objects.filter(customer="late").count() == 1

    with pytest.raises(OperationalError, match="readonly database"), transaction.atomic(using="replica"):
        Order.objects.using("replica").create(customer="nope", total=1.0)
    with pytest.raises(OperationalError, match="readonly database"):
        Order.objects.using("replica").filter(customer="late").delete()
    assert Order.objects.filter(customer="nope").count() == 0
    assert Order.objects.using("default").count() == 41



def test_django_bookmark_middleware_shows_users_their_own_writes(django_shop: ReplicatedPrimary) -> None:
    """A POST through lsvfs.django.BookmarkMiddleware gets the primary's bookmark
    in a cookie; a GET carrying it reads the slow replica at that TXID or later,
    so the order just created is counted; the floor is gone after the request;
    a GET without the cookie reads whatever the replica last polled."""
    from django.db import connections
    from django.http import HttpRequest, HttpResponse
    from django.test import RequestFactory
    from shop.models import Order

    from lsvfs.django import BookmarkMiddleware

    def view(request: HttpRequest) -> HttpResponse:
        if request.method == "POST":
            Order.objects.create(customer="me", total=1.0)  # routed to the primary
            return HttpResponse(status=201)
        return HttpResponse(str(Order.objects.using("bookmarked").filter(customer="me").count()))

    middleware = BookmarkMiddleware(view)
    rf = RequestFactory()
    base = int(middleware(rf.get("/orders")).content)
    for i in range(1, 6):
        posted = middleware(rf.post("/orders"))
        assert posted.status_code == 201
        cookie = posted.cookies["lsvfs_bookmark"]
        assert cookie["httponly"] and cookie["max-age"] == 60
        get = rf.get("/orders")
        get.COOKIES["lsvfs_bookmark"] = cookie.value
        assert int(middleware(get).content) == base + i
        with connections["bookmarked"].cursor() as c:
            c.execute("PRAGMA litestream_min_txid")
            assert c.fetchone()[0] == "0" * 16
    assert "lsvfs_bookmark" not in middleware(rf.get("/orders")).cookies  # reads set no bookmark
    middleware(rf.post("/orders"))
    assert int(middleware(rf.get("/orders")).content) == base + 5  # no cookie: the next poll is seconds away
    junk = rf.get("/orders")
    junk.COOKIES["lsvfs_bookmark"] = "not a txid"
    assert middleware(junk).status_code == 200


# ---------------------------------------------------------------------------
# Flask + SQLAlchemy


def test_flask_reads_your_writes_through_wait_for(replicated_primary: Any) -> None:
    """The Flask recipe: after a write, a cookie with the bookmark; before a
    request that carries one, lsvfs.wait_for on the replica URL, so every pooled
    connection reads at least that TXID."""
    flask = pytest.importorskip("flask")
    p = replicated_primary("file", control_socket=True)
    p.execute(ORDERS)
    p.wait_replicated()
    url = p.replica_url
    replica = sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(
        lsvfs.uri(url, poll_interval=SLOW_POLL), uri=True, check_same_thread=False))
    app = flask.Flask(__name__)

    @app.before_request
    def read_your_writes() -> None:
        if mark := flask.request.cookies.get("lsvfs_bookmark"):
            lsvfs.wait_for(url, mark)

    @app.after_request
    def bookmark(response: Any) -> Any:
        if flask.request.method not in ("GET", "HEAD") and response.status_code < 400:
            response.set_cookie("lsvfs_bookmark", lsvfs.bookmark(p.db_path, socket=p.socket_path), max_age=60,
                                httponly=True)
        return response

    @app.post("/orders")
    def create() -> tuple[str, int]:
        p.execute("INSERT INTO orders(customer, total) VALUES ('me', 1.0)")  # the app's primary
        return "", 201

    @app.get("/orders")
    def count() -> str:
        with replica.connect() as c:
            return str(c.exec_driver_sql("SELECT count(*) FROM orders").scalar())

    try:
        client = app.test_client()
        assert client.get("/orders").text == "0"
        for i in range(1, 6):
            assert client.post("/orders").status_code == 201
            assert client.get("/orders").text == str(i)
        anonymous = app.test_client()
        p.execute("INSERT INTO orders(customer, total) VALUES ('other', 1.0)")
        assert anonymous.get("/orders").text == "5"  # no bookmark: the next poll is seconds away
    finally:
        replica.dispose()
