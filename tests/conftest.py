"""Shared fixtures: a PostgreSQL server and an MQTT broker for the whole session.

Database
    database_url   session  OEE_TEST_DATABASE_URL if set, else database `oee_test` on a private embedded
                            PostgreSQL (started on first use, stopped at the end of the session).
    fresh_db_url   function a new database with a random name on the same server, dropped afterwards.
    pg_server      function the private server: .url (database `postgres`), .stop(), .start(), .restart();
                            skipped when OEE_TEST_DATABASE_URL is set. Restarted after the test if left down.
MQTT
    mqtt_url       session  OEE_TEST_MQTT_URL if set, else a private `mosquitto` on a free port (fails with
                            an install hint when the binary is missing).
    mqtt_broker    function the private broker: .url, .stop(), .start(), .restart() (same port); skipped
                            when OEE_TEST_MQTT_URL is set. Restarted after the test if left down.

Tests using a database fixture are marked `db` automatically (CI re-runs `-m db` against PostgreSQL 15).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

# `from harness import ...` works whether or not tests/ becomes a package.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from harness import (
    MOSQUITTO_MISSING,
    ExternalServer,
    MosquittoBroker,
    PgServer,
    find_mosquitto,
    temporary_database,
)
from oee_stream.config import Plant, load_plant
from oee_stream.embedded import ensure_database, with_database

DB_ENV = "OEE_TEST_DATABASE_URL"
MQTT_ENV = "OEE_TEST_MQTT_URL"
DB_FIXTURES = frozenset({"database_url", "fresh_db_url", "pg_server"})
MQTT_FIXTURES = frozenset({"mqtt_url", "mqtt_broker"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "db: talks to PostgreSQL (added automatically to tests using database_url, fresh_db_url or "
        "pg_server); CI runs this subset again against the machine's PostgreSQL 15",
    )
    config.addinivalue_line(
        "markers", "mqtt: talks to an MQTT broker (added automatically to tests using mqtt_url or mqtt_broker)"
    )
    # A CI timeout or `kill` sends SIGTERM, which by default ends Python without running finalizers or atexit:
    # turn it into an interrupt so the private servers are stopped.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:

        def _interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, _interrupt)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselection
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & DB_FIXTURES:
            item.add_marker(pytest.mark.db)
        if names & MQTT_FIXTURES:
            item.add_marker(pytest.mark.mqtt)


# ------------------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def _pg_session() -> Iterator[PgServer | ExternalServer]:
    url = os.environ.get(DB_ENV)
    if url:
        yield ExternalServer(url, DB_ENV)
        return
    server = PgServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def database_url(_pg_session: PgServer | ExternalServer) -> str:
    if isinstance(_pg_session, ExternalServer):
        return _pg_session.url
    ensure_database(_pg_session.url, "oee_test")
    return with_database(_pg_session.url, "oee_test")


@pytest.fixture
def fresh_db_url(database_url: str) -> Iterator[str]:
    with temporary_database(database_url) as url:
        yield url


@pytest.fixture
def db(fresh_db_url: str) -> str:
    """A fresh database with the schema migrated."""
    from oee_stream.storage.migrations import migrate

    migrate(fresh_db_url)
    return fresh_db_url


@pytest.fixture
def plant() -> Plant:
    """The demo plant model (deploy/demo/plant.yaml)."""
    return load_plant(Path(__file__).resolve().parents[1] / "deploy" / "demo" / "plant.yaml")


@pytest.fixture
def pg_server(_pg_session: PgServer | ExternalServer) -> Iterator[PgServer]:
    if isinstance(_pg_session, ExternalServer):
        pytest.skip(f"needs the private PostgreSQL to stop/start it, but {DB_ENV} points at an external server")
    yield _pg_session
    _pg_session.start()  # no-op when running; leaves the server up for the next test


# ------------------------------------------------------------------------------------------------ MQTT


@pytest.fixture(scope="session")
def _mqtt_session() -> Iterator[MosquittoBroker | ExternalServer]:
    url = os.environ.get(MQTT_ENV)
    if url:
        yield ExternalServer(url, MQTT_ENV)
        return
    binary = find_mosquitto()
    if binary is None:
        pytest.fail(MOSQUITTO_MISSING, pytrace=False)
    broker = MosquittoBroker(binary)
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def mqtt_url(_mqtt_session: MosquittoBroker | ExternalServer) -> str:
    return _mqtt_session.url


@pytest.fixture
def mqtt_broker(_mqtt_session: MosquittoBroker | ExternalServer) -> Iterator[MosquittoBroker]:
    if isinstance(_mqtt_session, ExternalServer):
        pytest.skip(f"needs the private mosquitto to stop/start it, but {MQTT_ENV} points at an external broker")
    yield _mqtt_session
    _mqtt_session.start()
