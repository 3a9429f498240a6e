"""The shared fixtures of conftest.py work."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from harness import MosquittoBroker, MqttProbe, PgServer, port_open, temporary_database


def test_database_url_select_1(database_url: str, request: pytest.FixtureRequest) -> None:
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert request.node.get_closest_marker("db") is not None, "db marker is added automatically"


def test_fresh_db_url_is_a_separate_database(database_url: str, fresh_db_url: str) -> None:
    assert fresh_db_url != database_url
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        name = conn.execute("select current_database()").fetchone()
        assert name is not None and name[0].startswith("oee_test_")
        conn.execute("create table only_here (x int)")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select to_regclass('only_here')").fetchone() == (None,)


def test_temporary_database_is_dropped(database_url: str) -> None:
    with temporary_database(database_url) as url, psycopg.connect(url) as conn:
        row = conn.execute("select current_database()").fetchone()
        assert row is not None
        name = row[0]
        # an open connection does not prevent the drop (WITH (FORCE))
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None


def test_pg_server_stop_start(pg_server: PgServer, database_url: str) -> None:
    url = pg_server.url
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("create table if not exists survives_restart (x int)")
    pg_server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(database_url, connect_timeout=2)
    pg_server.start()
    assert pg_server.url == url
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select to_regclass('survives_restart') is not null").fetchone() == (True,)


def test_pg_server_left_stopped_is_restarted_by_fixture(pg_server: PgServer) -> None:
    pg_server.stop()  # the fixture's teardown brings it back; the next test checks


def test_pg_server_is_back(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_mqtt_qos1_round_trip(mqtt_url: str, request: pytest.FixtureRequest) -> None:
    topic = f"harness/{uuid.uuid4().hex[:8]}"
    with MqttProbe(mqtt_url) as sub, MqttProbe(mqtt_url) as pub:
        sub.connect().subscribe(topic, qos=1)
        pub.connect().publish(topic, b"hello", qos=1)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.qos) == (topic, b"hello", 1)
    assert request.node.get_closest_marker("mqtt") is not None


def test_mqtt_broker_restart(mqtt_broker: MosquittoBroker) -> None:
    topic = f"harness/{uuid.uuid4().hex[:8]}"
    with MqttProbe(mqtt_broker.url) as sub, MqttProbe(mqtt_broker.url) as pub:
        sub.connect().subscribe(topic, qos=1)
        pub.connect()
        mqtt_broker.stop()
        assert not port_open("127.0.0.1", mqtt_broker.port)
        mqtt_broker.start()
        # paho reconnects by itself; the probe re-subscribes (clean session)
        sub.wait_connected(10)
        pub.wait_connected(10)
        # CONNACK can precede the re-subscription's SUBACK (and a probe may not yet have noticed the
        # outage), so keep publishing until the subscriber sees a message; each try is bounded.
        received = None
        for _ in range(15):
            try:
                pub.publish(topic, b"after restart", qos=1)
                received = sub.get(timeout=1.0)
                break
            except (TimeoutError, OSError, RuntimeError, ValueError):
                continue
        assert received is not None and received.payload == b"after restart"
    mqtt_broker.restart()
    assert port_open("127.0.0.1", mqtt_broker.port)


def test_mqtt_broker_left_stopped_is_restarted_by_fixture(mqtt_broker: MosquittoBroker) -> None:
    mqtt_broker.stop()


def test_mqtt_broker_is_back(mqtt_url: str) -> None:
    with MqttProbe(mqtt_url) as probe:
        probe.connect(5)


def test_mqtt_probe_sees_no_stray_messages(mqtt_url: str) -> None:
    topic = f"harness/{uuid.uuid4().hex[:8]}"
    with MqttProbe(mqtt_url) as sub:
        sub.connect().subscribe(topic, qos=1)
        sub.expect_nothing(0.1)
    with pytest.raises(TimeoutError):
        sub.get(0.05)
