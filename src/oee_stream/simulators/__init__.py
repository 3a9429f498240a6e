"""The simulated plant: scenario files, a deterministic timeline, the ground-truth ledger, and OPC UA /
Modbus TCP servers replaying it in real time.

Modules are imported on use (`from oee_stream.simulators.ledger import Ledger`) so that reading a
ledger does not pull in asyncua and pymodbus.
"""
