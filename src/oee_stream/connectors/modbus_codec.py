"""Pure decoding (and encoding, for simulators and tests) of Modbus register values.

Modbus registers are 16-bit words sent big-endian on the wire. Values wider than one register are spread
over consecutive registers in a device-specific order, named after the bytes of the big-endian value
``A B C D`` (``A`` most significant) as they appear on the wire:

    ABCD  big-endian (the Modbus default, "high word first")
    CDAB  word-swapped ("low word first", common on Siemens/Schneider)
    BADC  byte-swapped inside each word
    DCBA  fully little-endian

For 64-bit values the same rule applies to ``A..H``. For 16-bit types, ``DCBA`` and ``BADC`` swap the two
bytes of the register; ``ABCD`` and ``CDAB`` leave it as it is (Telegraf's convention).

``bit`` reads one bit of a 16-bit register (bit 0 = least significant, after the byte order is applied).

`describe_exception` words a device's exception response (the device understood the request and refused
it) for the person who has to fix the configuration or the device.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal

ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]
BYTE_ORDERS: tuple[ByteOrder, ...] = ("ABCD", "DCBA", "BADC", "CDAB")

DataType = Literal["bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "bit"]
DATA_TYPES: tuple[DataType, ...] = ("bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "bit")

# struct format (big-endian) and number of 16-bit registers of each register-backed type
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": (">h", 1),
    "uint16": (">H", 1),
    "bit": (">H", 1),
    "int32": (">i", 2),
    "uint32": (">I", 2),
    "float32": (">f", 2),
    "float64": (">d", 4),
}

Value = int | float | bool


class DecodeError(ValueError):
    """Registers that cannot be decoded as the configured type (wrong count, value out of range)."""


def register_count(data_type: DataType) -> int:
    """How many 16-bit registers a value of this type occupies (1 for the bit types)."""
    if data_type == "bool":
        return 1
    return _FORMATS[data_type][1]


def _reorder(data: bytes, byte_order: ByteOrder) -> bytes:
    """Wire bytes → big-endian value bytes (the permutation is its own inverse, so it also encodes)."""
    if byte_order == "ABCD":
        return data
    if byte_order == "DCBA":
        return data[::-1]
    if byte_order == "BADC":
        return b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
    # CDAB: word order reversed, bytes inside each word kept
    if len(data) == 2:
        return data
    return b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))


def decode(
    registers: Sequence[int], data_type: DataType, byte_order: ByteOrder = "ABCD", bit: int | None = None
) -> Value:
    """Decode the registers of one value. ``registers`` must hold exactly ``register_count`` words."""
    if data_type == "bool":
        if len(registers) != 1:
            raise DecodeError(f"bool needs 1 register or bit, got {len(registers)}")
        return bool(registers[0])
    fmt, n = _FORMATS[data_type]
    if len(registers) != n:
        raise DecodeError(f"{data_type} needs {n} register(s), got {len(registers)}")
    try:
        wire = b"".join(int(r).to_bytes(2, "big") for r in registers)
    except OverflowError as exc:
        raise DecodeError(f"register value out of 0..65535 in {list(registers)}") from exc
    value: Value = struct.unpack(fmt, _reorder(wire, byte_order))[0]
    if data_type == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise DecodeError(f"type bit needs bit 0..15, got {bit!r}")
        return bool((int(value) >> bit) & 1)
    return value


def encode(value: Value, data_type: DataType, byte_order: ByteOrder = "ABCD", bit: int | None = None) -> list[int]:
    """The registers a device with this byte order would hold for ``value`` (inverse of `decode`).

    For ``bit`` the result is a register with only that bit set (or zero).
    """
    if data_type == "bool":
        return [1 if value else 0]
    if data_type == "bit":
        if bit is None or not 0 <= bit <= 15:
            raise DecodeError(f"type bit needs bit 0..15, got {bit!r}")
        value = (1 << bit) if value else 0
    fmt, n = _FORMATS[data_type]
    try:
        packed = struct.pack(fmt, value)
    except struct.error as exc:
        raise DecodeError(f"{value!r} does not fit {data_type}: {exc}") from exc
    wire = _reorder(packed, byte_order)
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, 2 * n, 2)]


def apply_scale(value: Value, scale: float = 1.0, offset: float = 0.0) -> Value:
    """``value * scale + offset``; integers stay integers when scale is 1 and offset 0; bools are untouched."""
    if isinstance(value, bool):
        return value
    if scale == 1.0 and offset == 0.0:
        return value
    return value * scale + offset


def is_finite(value: Value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


# What a device's exception code means on a read, and what usually causes it in a plant.
EXCEPTION_CODES: dict[int, tuple[str, str]] = {
    1: ("illegal function", "the device does not serve this register kind: check `register`"),
    2: ("illegal data address", "the device has no such register: check address / 0- vs 1-based"),
    3: ("illegal data value", "the device refuses this address range or length: check the address and "
                              "max_registers_per_read"),
    4: ("server device failure", "the device failed to read it, or a wrong slave_id / unit id behind a gateway"),
    5: ("acknowledge", "the device accepted the request but has not finished it"),
    6: ("server device busy", "the device is busy: asked again at the next poll"),
    8: ("memory parity error", "the device found its memory corrupt"),
    10: ("gateway path unavailable", "the gateway has no path to this unit: wrong slave_id / unit id behind "
                                     "a gateway, or the gateway's routing"),
    11: ("gateway target device failed to respond", "nothing answered behind the gateway: wrong slave_id / "
                                                    "unit id behind a gateway, or the device or its serial "
                                                    "line is down"),
}
# Refused for the registers asked, not for the device as a whole: a smaller read can avoid them.
ADDRESS_EXCEPTIONS: frozenset[int] = frozenset({2, 3})


_UNKNOWN_EXCEPTION = ("unknown code", "not defined by the Modbus specification")


def exception_name(code: int) -> str:
    """``exception 2 illegal data address``."""
    return f"exception {code} {EXCEPTION_CODES.get(code, _UNKNOWN_EXCEPTION)[0]}"


def describe_exception(code: int) -> str:
    """``exception 2 illegal data address (the device has no such register: ...)``."""
    return f"{exception_name(code)} ({EXCEPTION_CODES.get(code, _UNKNOWN_EXCEPTION)[1]})"
