"""The event store's promises, run against both backends (SQLite file, real PostgreSQL from pgserver):
idempotency, conflicts, history order, the ordered item feed, reply after COMMIT, group commit;
plus URL forms, schema migrations (a SQLite file from before migrations existed) and clear errors."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import Future

import numpy as np
import pytest

from linkedout.events import (
    Event,
    EventConflict,
    EventStoreError,
    ItemExists,
    open_event_store,
)
from linkedout.events.base import redact, sqlite_path


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.sqlite'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url):
    s = open_event_store(store_url)
    yield s
    s.close()


def answers(futures: list[Future]) -> list:
    """Each call's result, or "conflict" where it raised `EventConflict`."""
    out: list = []
    for f in futures:
        try:
            out.append(f.result())
        except EventConflict:
            out.append("conflict")
    return out


def independent_reader(url: str):
    """A connection that shares nothing with the store under test: it sees only committed data."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(sqlite_path(url), check_same_thread=False)
    else:
        import psycopg

        conn = psycopg.connect(url, autocommit=True)
    return conn


def test_same_event_again_is_a_duplicate_and_changed_content_is_a_conflict_writing_nothing(store):
    events = [Event(f"e{i}", "u1", f"i{i}", 100.0 + i) for i in (4, 2, 9)]
    assert store.append_events(events).result() == (3, [])
    assert store.append_events(events[:2]).result() == (0, ["e4", "e2"])  # a client retry
    changed = Event("e4", "u1", "i11", 104.0)
    with pytest.raises(EventConflict, match="e4"):
        store.append_events([Event("new1", "u1", "i1", 1.0), changed]).result()
    assert store.count_events() == 3  # the conflicting call wrote nothing, not even its new event
    # without ts, the server stamps the first arrival; a retry without ts is still a duplicate
    assert store.append_events([Event("x1", "u2", "i1", None)]).result() == (1, [])
    assert store.append_events([Event("x1", "u2", "i1", None)]).result() == (0, ["x1"])
    with pytest.raises(EventConflict):
        store.append_events([Event("x1", "u2", "i2", None)]).result()
    # the same id twice inside one call: the first copy is new, the second a duplicate
    assert store.append_events([Event("d", "u3", "i1", 5.0)] * 2).result() == (1, ["d"])
    assert store.count_events() == 5


def test_a_conflict_fails_only_its_own_call_not_the_calls_committed_beside_it(store):
    store.append_events([Event("c0", "u", "i0", 1.0)]).result()
    # submitted together: one group transaction on both backends (nothing is waiting before them)
    futures = [store.append_events([Event(f"ok{i}", "u", "i1", 2.0 + i)]) for i in range(20)]
    futures.insert(10, store.append_events([Event("c0", "u", "i9", 1.0)]))
    outcomes = answers(futures)
    assert outcomes.count("conflict") == 1 and outcomes[10] == "conflict"
    assert store.count_events() == 21


def test_calls_committed_together_answer_as_they_would_alone_in_order(store):
    """PostgreSQL inserts the events of a whole group of calls with one statement; every call still
    gets its own answer, as if the calls had run one after another: an id's first copy is new, a later
    copy with the same content a duplicate (also across calls and inside one call), with other content
    a conflict of that call alone."""
    store.append_events([Event("old", "u", "i0", 1.0)]).result()
    calls = [
        [Event("a", "u", "i1", 2.0)],
        [Event("a", "u", "i1", 2.0), Event("b", "u", "i2", 3.0)],  # a: same content as the call before
        [Event("old", "u", "i0", 1.0)],  # stored before the group
        [Event("b", "u", "i3", 3.0)],  # b with another item: a conflict
        [Event("c", "v", "i4", None), Event("c", "v", "i4", None)],
        [Event("e", "v", "i5", 4.0), Event("e", "v", "i6", 4.0)],  # a repeat inside one call, changed
    ]
    futures = [store.append_events(c) for c in calls]  # queued together: one group on both backends
    outcomes = answers(futures)
    assert outcomes == [(1, []), (1, ["a"]), (0, ["old"]), "conflict", (1, ["c"]), "conflict"]
    assert store.count_events() == 4  # old, a, b, c: the conflicting calls stored nothing


def test_history_is_ordered_by_ts_with_ties_by_arrival_and_limited_to_the_latest(store):
    store.append_events([Event("a", "u", "late", 30.0), Event("b", "u", "tie1", 20.0)]).result()
    store.append_events([Event("c", "u", "tie2", 20.0), Event("d", "u", "early", 10.0)]).result()
    store.append_events([Event("e", "other", "x", 15.0)]).result()
    assert store.history("u", 10) == ["early", "tie1", "tie2", "late"]
    assert store.history("u", 2) == ["tie2", "late"]
    assert store.history("nobody", 10) == []
    rows = list(store.watch_events())
    assert [(r.user_id, r.item_id) for r in rows] == [
        ("u", "early"),
        ("other", "x"),
        ("u", "tie1"),
        ("u", "tie2"),
        ("u", "late"),
    ]


def test_item_feed_returns_items_in_order_after_a_position_and_refuses_a_second_id(store):
    vec = np.arange(4, dtype=np.float32).tobytes()
    seqs = []
    for name in ("n1", "n2", "n3"):
        seqs.append(store.add_item(name, "B", vec, None, f"title {name}", b"jpg", "tokens").result())
    store.add_item("other", "B2", vec, b"\x00" * 8, None, None, "video").result()
    assert seqs == sorted(seqs)
    with pytest.raises(ItemExists):
        store.add_item("n2", "B", vec, None, None, None, "tokens").result()
    got = store.items_after("B", 0)
    assert [r.item_id for r in got] == ["n1", "n2", "n3"] and [r.seq for r in got] == seqs
    assert got[0].vector == vec and got[0].title == "title n1" and got[0].thumbnail == b"jpg"
    assert [r.item_id for r in store.items_after("B", seqs[0])] == ["n2", "n3"]
    assert store.items_after("B", seqs[-1]) == []
    assert store.items_after("B2", 0)[0].layer_weights == b"\x00" * 8


def test_every_write_is_visible_to_another_connection_when_its_future_resolves(store, store_url):
    """Reply after COMMIT: at the moment each future resolves, a separate connection already sees
    what it wrote (a store that replied before committing fails this under concurrency)."""
    reader = independent_reader(store_url)
    lock = threading.Lock()
    unseen: list[str] = []
    param = "?" if store_url.startswith("sqlite") else "%s"

    checked = threading.Semaphore(0)

    def check(event_id: str, fut: Future) -> None:
        try:
            if fut.exception() is not None:
                unseen.append(f"{event_id}: {fut.exception()}")
                return
            with lock:
                row = reader.execute(f"SELECT 1 FROM events WHERE event_id = {param}", (event_id,)).fetchone()
            if row is None:
                unseen.append(event_id)
        finally:
            checked.release()

    futures = []
    for i in range(300):
        f = store.append_events([Event(f"v{i}", f"u{i % 7}", "i1", float(i))])
        f.add_done_callback(lambda fut, i=i: check(f"v{i}", fut))
        futures.append(f)
    for f in futures:
        f.result()
    # a future's result() returns before its callbacks have run (they run after the waiters are
    # woken): close the reader only once every check is over, or a late check uses a closed connection
    for _ in futures:
        assert checked.acquire(timeout=60), "a done-callback never ran"
    reader.close()
    assert not unseen, unseen[:5]
    assert store.commits < 300  # group commit: many calls shared a COMMIT


def test_schema_version_table_records_the_latest_migration(store, store_url):
    from linkedout.events import postgres, sqlite

    latest = (sqlite if store_url.startswith("sqlite") else postgres).LATEST
    assert store.schema_version() == latest
    again = open_event_store(store_url)  # reopening migrates nothing and keeps the data
    assert again.schema_version() == latest and again.migrated_from == latest
    again.close()


def test_a_newer_schema_is_refused_with_a_clear_error(store_url):
    s = open_event_store(store_url)
    s.close()
    conn = independent_reader(store_url)
    conn.execute("INSERT INTO schema_version VALUES (99, 0)")
    if store_url.startswith("sqlite"):
        conn.commit()
    conn.close()
    with pytest.raises(EventStoreError, match="newer than this linkedout"):
        open_event_store(store_url)


# Today's schema before migrations existed (linkedout/serve/events.py, before this package).
OLD_SQLITE_SCHEMA = """
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
    received REAL NOT NULL);
CREATE INDEX events_user ON events (user_id, ts, seq);
CREATE TABLE items (item_id TEXT PRIMARY KEY, bundle_id TEXT NOT NULL, vector BLOB NOT NULL,
    layer_weights BLOB, title TEXT, thumbnail BLOB, source TEXT, added REAL NOT NULL);
"""


def test_a_sqlite_file_from_before_migrations_is_migrated_keeping_events_and_item_order(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SQLITE_SCHEMA)
        conn.execute("INSERT INTO events VALUES (1, 'e1', 'u', 'i3', 5.0, 'watch', 5.0)")
        for item_id, added in (("b", 2.0), ("a", 1.0), ("c", 3.0)):  # rowid order != added order
            conn.execute(
                "INSERT INTO items VALUES (?, 'B', ?, NULL, ?, NULL, 'tokens', ?)",
                (item_id, b"\x00" * 4, item_id.upper(), added),
            )
    store = open_event_store(path)  # a bare path is SQLite
    try:
        assert store.migrated_from == 0 and store.schema_version() == 2
        assert store.history("u", 5) == ["i3"]
        assert [r.item_id for r in store.items_after("B", 0)] == ["a", "b", "c"]  # the order replayed before
        assert store.add_item("d", "B", b"\x00" * 4, None, None, None, "tokens").result() == 4
        assert store.append_events([Event("e1", "u", "i3", 5.0)]).result() == (0, ["e1"])
    finally:
        store.close()


def test_url_forms_and_bad_urls(tmp_path):
    assert sqlite_path(f"sqlite:///{tmp_path}/a.sqlite") == f"{tmp_path}/a.sqlite"
    assert sqlite_path("relative/state.sqlite") == "relative/state.sqlite"
    with pytest.raises(EventStoreError, match="sqlite:///absolute"):
        open_event_store("sqlite://relative.sqlite")
    with pytest.raises(EventStoreError, match="unknown event store URL scheme"):
        open_event_store("mysql://localhost/db")
    s = open_event_store(f"sqlite:///{tmp_path}/deep/dir/a.sqlite")  # parents are created
    assert s.url == f"sqlite:///{tmp_path}/deep/dir/a.sqlite"
    s.close()
    assert redact("postgresql://me:secret@db:5432/x") == "postgresql://me:***@db:5432/x"


def test_unreachable_postgres_is_a_clear_error_naming_the_url_without_its_password():
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'linkedout[postgres]')")
    with pytest.raises(
        EventStoreError, match=r"cannot use PostgreSQL at postgresql://me:\*\*\*@127\.0\.0\.1:1/"
    ) as e:
        open_event_store("postgresql://me:secret@127.0.0.1:1/nodb", connect_timeout=2)
    assert "secret" not in str(e.value)


def test_postgres_connections_bound_their_socket_waits_unless_the_url_says_otherwise():
    """A partition must not hold a write for the kernel's retransmission timeout (minutes): every
    connection gets tcp_user_timeout and keepalives; a URL's own values win."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'linkedout[postgres]')")
    from psycopg.conninfo import conninfo_to_dict

    from linkedout.events.postgres import bounded_conninfo

    got = conninfo_to_dict(bounded_conninfo("postgresql://me:pw@db:5433/x?application_name=a", 10))
    assert got["tcp_user_timeout"] == "10000" and got["keepalives"] == "1"
    assert (got["host"], got["port"], got["dbname"], got["user"], got["password"]) == (
        "db",
        "5433",
        "x",
        "me",
        "pw",
    )
    assert got["application_name"] == "a"
    own = conninfo_to_dict(bounded_conninfo("postgresql://db/x?tcp_user_timeout=2500", 10))
    assert own["tcp_user_timeout"] == "2500"
    with pytest.raises(EventStoreError, match="not a PostgreSQL URL"):
        bounded_conninfo("postgresql://db/x?nonsense_option=1", 10)
