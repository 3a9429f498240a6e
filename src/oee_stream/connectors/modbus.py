"""Modbus TCP (and RTU over TCP) polling connector, read-only function codes 1-4.

Each poll group is polled at its interval on one shared connection. The registers of a group are merged
into as few requests as possible (same register kind, gaps up to `max_gap`, at most
`max_registers_per_read`). A sample's timestamp is the time the response arrived. Every poll gives each
register of the group one sample. On a timeout or connection error the rest of the poll is published with
quality ``bad`` (value null), so the engine counts that time as ``unknown``; the connector reconnects with
exponential backoff and never stops polling.

An exception response keeps the connection. Exception 2 or 3 (illegal data address / value) to a merged
read means the device refuses some register in it (or the read's span): the read is split in halves until
the registers that fail on their own are found. Those are published ``bad`` at every poll and read again
on their own after `RECHECK_FIRST_S`, then ever less often up to every `RECHECK_S` (a program download can
add them, and some PLCs refuse every address while one runs); the group's reads are planned around them,
so the other registers keep their values. A merged read that fails although each of its halves reads is not
merged across that point again. Any other exception (device failure, busy, gateway) marks its read ``bad``
for that poll. These problems are logged at WARNING when they start or change, repeated at most every
`REMIND_S` while they last, and at INFO when they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from oee_stream.bus import MqttSettings, Sample
from oee_stream.connectors.aio import check_cancelled
from oee_stream.connectors.base import Backoff, BaseConnector, register_connector
from oee_stream.connectors.config import ModbusConfig, ModbusRegister, RegisterKind, ResolvedModbusGroup
from oee_stream.connectors.modbus_codec import (
    ADDRESS_EXCEPTIONS,
    ByteOrder,
    DecodeError,
    apply_scale,
    decode,
    describe_exception,
    exception_name,
    is_finite,
    register_count,
)

log = logging.getLogger(__name__)

MAX_BITS_PER_READ = 2000
RECHECK_FIRST_S = 5.0  # registers the device refused are read again after this, doubling ...
RECHECK_S = 60.0  # ... up to this
REMIND_S = 300.0  # a read problem that persists is logged again at most this often


@dataclass(frozen=True)
class ReadBlock:
    """One request: `count` registers (or bits) of `register` kind from `start`, serving `items`."""

    register: RegisterKind
    start: int
    count: int
    items: tuple[ModbusRegister, ...]


def _width(r: ModbusRegister) -> int:
    return 1 if r.register_kind in ("coil", "discrete") else register_count(r.type)


def plan_reads(
    registers: Iterable[ModbusRegister], max_gap: int, max_registers: int,
    cuts: Collection[tuple[RegisterKind, int]] = (),
) -> list[ReadBlock]:
    """Merge registers of the same kind into contiguous reads (pure; order: kind, address).

    A cut ``(kind, a)`` keeps reads of that kind from spanning both ``a - 1`` and ``a``; a register wider
    than a cut is still read, on its own.
    """
    by_kind: dict[RegisterKind, list[ModbusRegister]] = {}
    for r in registers:
        by_kind.setdefault(r.register_kind, []).append(r)
    blocks: list[ReadBlock] = []
    for kind in ("coil", "discrete", "holding", "input"):
        regs = sorted(by_kind.get(kind, []), key=lambda r: (r.address, _width(r)))
        limit = MAX_BITS_PER_READ if kind in ("coil", "discrete") else max_registers
        kind_cuts = sorted(a for k, a in cuts if k == kind)
        start = end = -1
        items: list[ModbusRegister] = []
        for r in regs:
            r_end = r.address + _width(r)
            new_end = max(end, r_end)
            if (items and r.address <= end + max_gap and new_end - start <= limit
                    and not any(start < c < new_end for c in kind_cuts)):
                end = new_end
                items.append(r)
                continue
            if items:
                blocks.append(ReadBlock(kind, start, end - start, tuple(items)))
            start, end, items = r.address, r_end, [r]
        if items:
            blocks.append(ReadBlock(kind, start, end - start, tuple(items)))
    return blocks


def block_of(items: Sequence[ModbusRegister]) -> ReadBlock:
    """The one read covering these registers (all of one kind, sorted by address)."""
    start = min(r.address for r in items)
    end = max(r.address + _width(r) for r in items)
    return ReadBlock(items[0].register_kind, start, end - start, tuple(items))


def describe_registers(items: Iterable[ModbusRegister], limit: int = 8) -> str:
    """``holding 12 (furnace-1/pressure), ...`` for a log line; long lists are cut after `limit`."""
    items = list(items)
    text = ", ".join(f"{r.register_kind} {r.address} ({r.machine}/{r.signal})" for r in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def describe_signals(items: Iterable[ModbusRegister], limit: int = 8) -> str:
    """``furnace-1/state, furnace-1/total, ...`` for a log line; long lists are cut after `limit`."""
    items = list(items)
    text = ", ".join(f"{r.machine}/{r.signal}" for r in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _exception_code(resp: Any) -> int:
    return int(getattr(resp, "exception_code", 0) or 0)


def _duration(seconds: float) -> str:
    """``0.3s``, ``45s``, ``5m``, ``12m30s``, ``2h05m`` for a log line."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m" + (f"{s % 60:02d}s" if s % 60 else "")
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def decode_block(
    block: ReadBlock, words: Sequence[int], bits: Sequence[bool], default_order: ByteOrder, ts: float
) -> list[Sample]:
    """Samples of one successful read (pure)."""
    out: list[Sample] = []
    for r in block.items:
        i = r.address - block.start
        try:
            if r.register_kind in ("coil", "discrete"):
                value: Any = bool(bits[i])
            else:
                raw = decode(words[i : i + register_count(r.type)], r.type,
                             r.byte_order or default_order, r.bit)
                value = apply_scale(raw, r.scale, r.offset)
        except (DecodeError, IndexError) as exc:
            log.warning("cannot decode %s/%s at %s %d: %s", r.machine, r.signal, r.register_kind, r.address, exc)
            out.append(Sample(r.machine, r.signal, ts, None, "bad"))
            continue
        if not is_finite(value):
            out.append(Sample(r.machine, r.signal, ts, None, "bad"))
        else:
            out.append(Sample(r.machine, r.signal, ts, value, "good"))
    return out


def bad_samples(items: Iterable[ModbusRegister], ts: float) -> list[Sample]:
    return [Sample(r.machine, r.signal, ts, None, "bad") for r in items]


class _InBackoff(ConnectionError):
    """No connection and the next attempt is not due yet."""


class _Link:
    """The one TCP connection to the controller, reopened with exponential backoff."""

    def __init__(self, cfg: ModbusConfig, conn: ModbusConnector) -> None:
        self.cfg = cfg
        self.conn = conn
        self.client: AsyncModbusTcpClient | None = None
        self.lock = asyncio.Lock()  # one request at a time on the link (many PLCs serve only one)
        self._connect_lock = asyncio.Lock()
        self.backoff = Backoff(cfg.reconnect_initial_s, cfg.reconnect_max_s)
        self._retry_at = 0.0
        self._was_connected = False
        self._failing = False

    async def get(self) -> AsyncModbusTcpClient:
        if self.client is not None and self.client.connected:
            return self.client
        async with self._connect_lock:  # several poll groups share the link: connect once
            return await self._connect()

    async def _connect(self) -> AsyncModbusTcpClient:
        if self.client is not None and self.client.connected:
            return self.client
        if time.monotonic() < self._retry_at:
            raise _InBackoff(f"reconnecting in {self._retry_at - time.monotonic():.1f}s")
        self.close()
        client = AsyncModbusTcpClient(
            self.cfg.host,
            port=self.cfg.port,
            framer=FramerType.RTU if self.cfg.rtu_over_tcp else FramerType.SOCKET,
            timeout=self.cfg.timeout_s,
            retries=0,
            reconnect_delay=0,  # we reconnect ourselves (fresh client, our backoff)
            name=f"modbus-{self.cfg.id}",
        )
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can return a connection made just as we are
            # cancelled, swallowing the cancellation (see connectors/aio.py)
            async with asyncio.timeout(self.cfg.timeout_s + 1.0):
                ok = await client.connect()
            await check_cancelled()  # pymodbus' own wait_for may have swallowed it
        except (TimeoutError, OSError, ModbusException) as exc:
            client.close()
            self.failed(f"connect: {exc!r}")
            raise ConnectionError(f"cannot connect to {self.cfg.controller}: {exc!r}") from exc
        except BaseException:  # cancelled: never leave a half-made connection open
            client.close()
            raise
        if not ok:
            client.close()
            self.failed("connect refused")
            raise ConnectionError(f"cannot connect to {self.cfg.controller}")
        self.client = client
        self.backoff.reset()
        if self._was_connected:
            self.conn.stats.reconnects += 1
        self._was_connected = True
        self._failing = False
        self.conn.stats.source_connected = True
        log.info("connector %s: connected to %s", self.cfg.id, self.cfg.controller)
        return client

    def failed(self, reason: str) -> None:
        self.close()
        self.conn.stats.source_errors += 1
        self.conn.stats.last_error = f"{self.cfg.controller}: {reason}"
        delay = self.backoff.next_delay()
        self._retry_at = time.monotonic() + delay
        level = logging.DEBUG if self._failing else logging.WARNING
        log.log(level, "connector %s: %s failed (%s); retry in %.1fs", self.cfg.id, self.cfg.controller, reason, delay)
        self._failing = True

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        self.conn.stats.source_connected = False


class _LinkLost(Exception):
    """A request failed below the Modbus layer; the link is closed and reopens with backoff."""


@dataclass
class _Refused:
    """A register the device refuses on its own (exception 2 or 3)."""

    code: int
    since: float  # monotonic


@dataclass
class _Trouble:
    """A read that keeps getting the same exception response."""

    code: int
    since: float  # monotonic
    logged: float  # monotonic, the last WARNING about it
    seen: float  # monotonic, the last failure
    count: int = 1


@dataclass
class _GroupPlan:
    """One poll group's reads, planned around what the device was found to refuse."""

    group: ResolvedModbusGroup
    max_gap: int
    max_registers: int
    blocks: list[ReadBlock] = field(default_factory=list)
    refused: dict[ModbusRegister, _Refused] = field(default_factory=dict)
    cuts: set[tuple[RegisterKind, int]] = field(default_factory=set)  # see plan_reads
    troubles: dict[tuple[RegisterKind, int, int], _Trouble] = field(default_factory=dict)
    next_recheck: float = 0.0  # monotonic
    recheck_delay: float = 0.0
    refused_logged: float = 0.0  # monotonic, the last WARNING about `refused`
    stale: bool = False  # `refused` or `cuts` changed since `blocks` were planned

    def __post_init__(self) -> None:
        self.replan()

    def replan(self) -> None:
        self.stale = False
        readable = [r for r in self.group.registers if r not in self.refused]
        # a refused register's own edges are cuts too: no read may span it
        cuts = self.cuts | {(r.register_kind, a) for r in self.refused for a in (r.address, r.address + _width(r))}
        self.blocks = plan_reads(readable, self.max_gap, self.max_registers, cuts)


@register_connector("modbus")
class ModbusConnector(BaseConnector):
    kind = "modbus"
    cfg: ModbusConfig
    recheck_first_s = RECHECK_FIRST_S
    recheck_s = RECHECK_S
    remind_s = REMIND_S

    def __init__(self, cfg: ModbusConfig, bus_settings: MqttSettings) -> None:
        super().__init__(cfg, bus_settings)
        self.plans = [_GroupPlan(g, cfg.max_gap, cfg.max_registers_per_read) for g in cfg.poll_groups()]
        self.stats.extra.update({"polls": 0, "exception_responses": 0, "timeouts": 0, "bad_registers": 0})

    async def run_source(self, emit: Callable[[list[Sample]], None]) -> None:
        link = _Link(self.cfg, self)
        try:
            async with asyncio.TaskGroup() as tg:
                for plan in self.plans:
                    tg.create_task(self._poll_loop(link, plan, emit), name=f"{self.id}-{plan.group.name}")
        finally:
            link.close()

    async def _poll_loop(self, link: _Link, plan: _GroupPlan, emit: Callable[[list[Sample]], None]) -> None:
        interval = plan.group.poll_interval_ms / 1000.0
        next_t = time.monotonic()
        while True:
            await check_cancelled()  # a cancellation swallowed below us must still end the loop
            try:
                samples = await self.poll_once(link, plan)
                await check_cancelled()
                emit(samples)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let a surprise kill the loop
                await check_cancelled()  # ... unless it is a cancellation in disguise
                log.exception("connector %s: poll of group %s failed", self.id, plan.group.name)
                self.stats.source_errors += 1
                emit(bad_samples(plan.group.registers, time.time()))
            next_t += interval
            now = time.monotonic()
            if next_t < now:
                next_t = now  # overran: skip the missed ticks rather than bursting
            await asyncio.sleep(next_t - now)

    async def poll_once(self, link: _Link, plan: _GroupPlan) -> list[Sample]:
        """One sample for every register of the group."""
        self.stats.extra["polls"] += 1
        try:
            client = await link.get()
        except ConnectionError:
            return bad_samples(plan.group.registers, time.time())
        out: list[Sample] = []
        lost = False
        try:
            if plan.refused and time.monotonic() >= plan.next_recheck:
                out += await self._recheck(link, client, plan)
            for block in plan.blocks:
                resp, ts = await self._request(link, client, block)
                if not resp.isError():
                    self._trouble_over(plan, block)
                    out += self._decode(block, resp, ts)
                    continue
                code = _exception_code(resp)
                if code in ADDRESS_EXCEPTIONS:
                    plan.troubles.pop((block.register, block.start, block.count), None)
                    out += await self._split(link, client, plan, block, code)
                else:
                    self._trouble(plan, block, code)
                    out += bad_samples(block.items, ts)
        except _LinkLost:
            lost = True
        if plan.stale:  # `plan.blocks` is not iterated any more
            plan.replan()
            self.stats.extra["bad_registers"] = sum(len(p.refused) for p in self.plans)
        if lost or plan.refused:  # else the blocks gave every register its sample
            # the refused registers not read again, and all not read because the link was lost
            done = {(s.machine, s.signal) for s in out}
            out += bad_samples((r for r in plan.group.registers if (r.machine, r.signal) not in done), time.time())
        return out

    async def _request(self, link: _Link, client: AsyncModbusTcpClient, block: ReadBlock) -> tuple[Any, float]:
        """The response to one read and the time it arrived; `_LinkLost` (link closed) if none came."""
        try:
            async with link.lock, asyncio.timeout(self.cfg.timeout_s + 1.0):
                resp = await self._read(client, block)
        except (TimeoutError, ModbusException, OSError) as exc:
            # pymodbus < 3.16 reports a cancelled request as ModbusIOException (pymodbus#3009)
            await check_cancelled()
            if isinstance(exc, TimeoutError) or "timeout" in str(exc).lower():
                self.stats.extra["timeouts"] += 1
            link.failed(f"read {block.register} {block.start}+{block.count}: {exc!r}")
            raise _LinkLost() from exc
        if resp.isError():
            self.stats.source_errors += 1
            self.stats.extra["exception_responses"] += 1
        return resp, time.time()

    def _decode(self, block: ReadBlock, resp: Any, ts: float) -> list[Sample]:
        return decode_block(block, list(getattr(resp, "registers", []) or []),
                            list(getattr(resp, "bits", []) or []), self.cfg.byte_order, ts)

    async def _split(
        self, link: _Link, client: AsyncModbusTcpClient, plan: _GroupPlan, block: ReadBlock, code: int,
    ) -> list[Sample]:
        """Samples of `block`, which the device refused with exception 2/3, read in ever smaller parts; the
        registers refused on their own go to `plan.refused` (they get no sample here)."""
        refused: dict[ModbusRegister, int] = {}
        cuts: set[tuple[RegisterKind, int]] = set()
        out = await self._bisect(link, client, plan, block.items, code, refused, cuts)
        now = time.monotonic()
        for r, c in refused.items():
            plan.refused[r] = _Refused(c, now)
        plan.cuts |= cuts
        plan.stale = True
        if refused:
            plan.recheck_delay = min(self.recheck_first_s, self.recheck_s)
            plan.next_recheck = now + plan.recheck_delay
        read = f"{block.register} {block.start}+{block.count}"
        for c in sorted(set(refused.values())):
            regs = [r for r, rc in refused.items() if rc == c]
            text = f"{describe_registers(regs)}: {describe_exception(c)}"
            self.stats.last_error = text
            others = (f", the other registers of {read} are read without {'it' if len(regs) == 1 else 'them'}"
                      if len(block.items) > len(refused) else "")
            log.warning("connector %s: %s; published bad%s; read again in %s, then less often up to every %s",
                        self.id, text, others, _duration(plan.recheck_delay), _duration(self.recheck_s))
            plan.refused_logged = now
        if cuts:
            at = ", ".join(f"{k} {a}" for k, a in sorted(cuts))
            text = (f"{read} ({describe_signals(block.items)}): {describe_exception(code)} for the whole read, "
                    f"though its parts read on their own")
            self.stats.last_error = text
            log.warning("connector %s: %s: a register between them is missing or the read is too long for "
                        "the device; no longer reading across %s", self.id, text, at)
        return out

    async def _bisect(
        self, link: _Link, client: AsyncModbusTcpClient, plan: _GroupPlan, items: Sequence[ModbusRegister],
        code: int, refused: dict[ModbusRegister, int], cuts: set[tuple[RegisterKind, int]],
    ) -> list[Sample]:
        """Read both halves of `items`, which failed together with `code` (2 or 3), and so on down."""
        if len(items) == 1:
            refused[items[0]] = code
            return []
        mid = len(items) // 2
        out: list[Sample] = []
        both_read = True
        for half in (items[:mid], items[mid:]):
            block = block_of(half)
            resp, ts = await self._request(link, client, block)
            if not resp.isError():
                self._trouble_over(plan, block)
                out += self._decode(block, resp, ts)
                continue
            both_read = False
            half_code = _exception_code(resp)
            if half_code in ADDRESS_EXCEPTIONS:
                out += await self._bisect(link, client, plan, half, half_code, refused, cuts)
            else:  # the device's state, not these registers: the next poll's split goes on from here
                self._trouble(plan, block, half_code)
                out += bad_samples(half, ts)
        if both_read:
            # neither half is refused, only the two together: never merge across here again
            cuts.add((items[mid].register_kind, items[mid].address))
        return out

    async def _recheck(self, link: _Link, client: AsyncModbusTcpClient, plan: _GroupPlan) -> list[Sample]:
        """Read each refused register on its own again; the samples of those that read."""
        plan.recheck_delay = min(plan.recheck_delay * 2, self.recheck_s)
        plan.next_recheck = time.monotonic() + plan.recheck_delay
        out: list[Sample] = []
        back: list[tuple[ModbusRegister, _Refused]] = []
        try:
            for r, state in list(plan.refused.items()):
                block = block_of((r,))
                resp, ts = await self._request(link, client, block)
                if not resp.isError():
                    out += self._decode(block, resp, ts)
                    back.append((r, plan.refused.pop(r)))
                    plan.stale = True
                    continue
                code = _exception_code(resp)
                if code in ADDRESS_EXCEPTIONS and code != state.code:
                    state.code = code
                    plan.refused_logged = time.monotonic()
                    text = f"{describe_registers([r])}: now {describe_exception(code)}"
                    self.stats.last_error = text
                    log.warning("connector %s: %s; still published bad", self.id, text)
        finally:  # also when the link is lost half way: those that did read are planned in again
            now = time.monotonic()
            if back:
                log.info("connector %s: %s read%s again (refused for %s); reading %s with the others", self.id,
                         describe_registers(r for r, _ in back), "s" if len(back) == 1 else "",
                         _duration(now - min(s.since for _, s in back)), "it" if len(back) == 1 else "them")
        if plan.refused and now - plan.refused_logged >= self.remind_s:
            plan.refused_logged = now
            for code in sorted({s.code for s in plan.refused.values()}):
                regs = [r for r, s in plan.refused.items() if s.code == code]
                since = min(s.since for r, s in plan.refused.items() if s.code == code)
                log.warning("connector %s: still refused for %s: %s: %s; published bad, read again every %s",
                            self.id, _duration(now - since), describe_registers(regs), describe_exception(code),
                            _duration(plan.recheck_delay))
        return out

    def _trouble(self, plan: _GroupPlan, block: ReadBlock, code: int) -> None:
        """Log an exception response to `block` at its start and change, then at most every `remind_s`."""
        key = (block.register, block.start, block.count)
        now = time.monotonic()
        text = (f"{block.register} {block.start}+{block.count} ({describe_signals(block.items)}) "
                f"at slave_id {self.cfg.slave_id}: {describe_exception(code)}")
        self.stats.last_error = text
        t = plan.troubles.get(key)
        # not seen for a while: that read was planned away meanwhile, this is a new start
        if t is None or t.code != code or now - t.seen > self.remind_s:
            plan.troubles[key] = _Trouble(code, now, now, now)
            log.warning("connector %s: %s; published bad until it reads", self.id, text)
            return
        t.seen = now
        t.count += 1
        if now - t.logged >= self.remind_s:
            t.logged = now
            log.warning("connector %s: %s; still, %d times in %s", self.id, text, t.count,
                        _duration(now - t.since))

    def _trouble_over(self, plan: _GroupPlan, block: ReadBlock) -> None:
        t = plan.troubles.pop((block.register, block.start, block.count), None)
        if t is not None:
            log.info("connector %s: %s %d+%d reads again (%s %d times in %s)", self.id, block.register,
                     block.start, block.count, exception_name(t.code), t.count, _duration(time.monotonic() - t.since))

    async def _read(self, client: AsyncModbusTcpClient, block: ReadBlock) -> Any:
        dev = self.cfg.slave_id
        if block.register == "holding":
            return await client.read_holding_registers(block.start, count=block.count, device_id=dev)
        if block.register == "input":
            return await client.read_input_registers(block.start, count=block.count, device_id=dev)
        if block.register == "coil":
            return await client.read_coils(block.start, count=block.count, device_id=dev)
        return await client.read_discrete_inputs(block.start, count=block.count, device_id=dev)
