"""Connectors: PLC / OPC UA / Modbus sources that publish samples to the MQTT bus.

Public API:
    load_connectors(paths)            -> list of validated configs (OpcUaConfig | ModbusConfig | plugin)
    check_connectors(plant, configs)  -> raises ConfigError if a machine or site is not in the plant
    build_connector(cfg, bus_settings) -> Connector (the plugin registry dispatches on cfg.kind)
    Connector                         -> Protocol: id, site, machines, stats, async run()
    ConnectorStats                    -> counters per connector (for Prometheus, see connectors.metrics)
    MemoryBuffer, DiskSpool           -> the publisher's store-and-forward buffers (`publish.buffer`)
"""

from oee_stream.connectors.base import (
    Backoff,
    BaseConnector,
    Connector,
    build_connector,
    connector_kinds,
    register_connector,
)
from oee_stream.connectors.config import (
    ConnectorConfig,
    ModbusConfig,
    ModbusRegister,
    OpcUaConfig,
    OpcUaNode,
    check_connectors,
    load_connectors,
    parse_connector,
    register_config_kind,
)
from oee_stream.connectors.envsubst import expand as expand_env
from oee_stream.connectors.publisher import ConnectorStats, MemoryBuffer, Publisher, SampleBuffer
from oee_stream.connectors.spool import DiskSpool, SpoolError

__all__ = [
    "Backoff",
    "BaseConnector",
    "Connector",
    "ConnectorConfig",
    "ConnectorStats",
    "DiskSpool",
    "MemoryBuffer",
    "ModbusConfig",
    "ModbusRegister",
    "OpcUaConfig",
    "OpcUaNode",
    "Publisher",
    "SampleBuffer",
    "SpoolError",
    "build_connector",
    "check_connectors",
    "connector_kinds",
    "expand_env",
    "load_connectors",
    "parse_connector",
    "register_config_kind",
    "register_connector",
]
