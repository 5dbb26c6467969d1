"""The Python data stack on a live replica: SQLAlchemy, Django and pandas.

Each recipe reads a real `litestream replicate` replica through the standard
library's sqlite3 (`lsvfs.uri`), checks the rows equal the primary's, follows
the primary (write, replicate, read again) and refuses writes.
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
    p = ReplicatedPrimary(tmp_path_factory.mktemp("django") / "p")
    try:
        settings.configure(
            INSTALLED_APPS=["shop"],
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(p.db_path)},
                "replica": {"ENGINE": "django.db.backends.sqlite3",
                            "NAME": lsvfs.uri(p.replica_url, poll_interval="50ms")},
            },
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

