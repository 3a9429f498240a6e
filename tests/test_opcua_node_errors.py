"""OPC UA connector, without a server: resolving node ids per node, and what an outage logs."""

from __future__ import annotations

import logging

import pytest
from asyncua import ua

from oee_stream.connectors.opcua import OutageLog, quiet_asyncua_teardown, resolve_node_id

NAMESPACES = ["http://opcfoundation.org/UA/", "urn:freeopcua:python:server", "urn:vendor:plc"]


def test_resolve_node_id_looks_up_the_namespace_uri() -> None:
    assert resolve_node_id("nsu=urn:vendor:plc;s=press-1.State", NAMESPACES) == ua.NodeId("press-1.State", 2)
    assert resolve_node_id("nsu=urn:vendor:plc;i=1001", NAMESPACES) == ua.NodeId(1001, 2)
    assert resolve_node_id("ns=3;s=x", None) == ua.NodeId("x", 3)
    assert type(resolve_node_id("ns=3;s=x", None)) is ua.NodeId


def test_an_unknown_namespace_uri_fails_that_node_only() -> None:
    # a ValueError naming the cause; the connector publishes that node bad and goes on with the others
    with pytest.raises(ValueError) as ei:
        resolve_node_id("nsu=urn:wrong:ns;s=caster-1.Temp", NAMESPACES)
    assert str(ei.value) == ("namespace URI 'urn:wrong:ns' is not on the server; it has: "
                             "['http://opcfoundation.org/UA/', 'urn:freeopcua:python:server', 'urn:vendor:plc']")
    with pytest.raises(ValueError, match="not an OPC UA NodeId"):
        resolve_node_id("ns=2;g=abc", NAMESPACES)


def test_outage_log_says_the_start_each_new_cause_and_then_every_few_minutes() -> None:
    log = OutageLog(every_s=300)
    refused, timeout = "ConnectionRefusedError(111)", "TimeoutError()"
    got = [log.failed(e, t) for e, t in [(refused, 0), (refused, 1), (refused, 3), (timeout, 7), (refused, 15),
                                         (timeout, 31), (refused, 299), (refused, 310), (refused, 330)]]
    assert got == [
        (logging.WARNING, ""),  # the outage starts
        (logging.DEBUG, ""), (logging.DEBUG, ""),
        (logging.WARNING, " (down for 7 s, 4 failed attempts)"),  # a new cause
        (logging.DEBUG, ""), (logging.DEBUG, ""), (logging.DEBUG, ""),  # causes seen before, alternating
        (logging.WARNING, " (down for 310 s, 8 failed attempts)"),  # still down, 5 minutes later
        (logging.DEBUG, ""),
    ]
    assert log.recovered(400) == (400, 9)
    assert log.recovered(401) is None  # no outage since
    assert log.failed(refused, 500) == (logging.WARNING, "")  # a new outage starts afresh


def test_asyncua_teardown_noise_is_dropped_real_errors_are_not(caplog: pytest.LogCaptureFixture) -> None:
    quiet_asyncua_teardown()
    quiet_asyncua_teardown()  # idempotent: one filter
    session = logging.getLogger("asyncua.client.ua_session.UaSession")
    client = logging.getLogger("asyncua.client.ua_client.UaClient")
    assert len(client.filters) == 1
    caplog.set_level(logging.INFO)

    def publish_crash(exc: Exception) -> None:
        try:
            raise exc
        except Exception:
            session.exception("Publish iteration crashed; retrying in 1s")

    client.warning("close_secure_channel was called but connection is closed")
    session.warning("close_session was called but connection is closed")
    publish_crash(ConnectionError("Connection is closed"))
    assert caplog.records == []
    publish_crash(ValueError("a bug"))  # not the connection going away: kept, with its traceback
    client.warning("something else")
    assert [(r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        ("Publish iteration crashed; retrying in 1s", True), ("something else", False)]
    caplog.clear()
    logging.getLogger("asyncua").setLevel(logging.DEBUG)  # someone debugs asyncua: everything is kept
    try:
        client.warning("close_secure_channel was called but connection is closed")
    finally:
        logging.getLogger("asyncua").setLevel(logging.NOTSET)
    assert len(caplog.records) == 1
