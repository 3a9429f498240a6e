"""Connector benchmark: samples/s one connector sustains into a real MQTT broker, and its CPU cost.

    .venv/bin/python benchmarks/connectors.py                      # OPC UA + Modbus, ~40 s
    .venv/bin/python benchmarks/connectors.py --ua-vars 2000 --mb-registers 2000 --seconds 20
    .venv/bin/python benchmarks/connectors.py --batching per_signal   # one message per machine and signal

Three processes per case, so CPU is attributed correctly:
  source     an asyncua server with N variables rewritten as fast as it can (OPC UA), or a pymodbus
             server with N holding registers (Modbus; the connector polls all of them every interval);
  connector  `OpcUaConnector` / `ModbusConnector` built from config, publishing to the broker;
  this one   a private `mosquitto` on a free port and an MQTT subscriber decoding every message and
             counting the samples that arrive (that count is the figure reported).
CPU per 1 000 samples is the connector process's user+system time (from /proc) over the measured interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class Mosquitto:
    def __init__(self) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise SystemExit("mosquitto not found (apt-get install mosquitto)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-mqtt-")
        conf = Path(self.dir) / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        "max_queued_messages 100000\nmax_inflight_messages 0\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class Counter:
    """An MQTT subscriber that decodes sample messages of one site and counts samples."""

    def __init__(self, port: int, site: str) -> None:
        import paho.mqtt.client as mqtt

        from oee_stream import bus

        self.samples = 0
        self.messages = 0
        self.errors = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{site}")

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            if "/_status/" in msg.topic:
                return
            try:
                _conn, got = bus.decode_samples(msg.topic, msg.payload)
            except Exception:
                self.errors += 1
                return
            with self.lock:
                self.samples += len(got)
                self.messages += 1

        def on_connect(c: Any, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            c.subscribe(f"oee/v1/{site}/#", qos=1)

        self.client.on_message = on_message
        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def read(self) -> tuple[int, int]:
        with self.lock:
            return self.samples, self.messages

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# ------------------------------------------------------------------------------------------ roles (child processes)


async def ua_source(port: int, n: int) -> None:
    from datetime import UTC, datetime

    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace("urn:oee-stream:bench")
    obj = await server.nodes.objects.add_object(idx, "bench")
    nodes = [await obj.add_variable(ua.NodeId(f"v{i}", idx), f"v{i}", ua.Variant(0, ua.VariantType.UInt32))
             for i in range(n)]
    await server.start()
    value = 0
    while True:  # rewrite every variable, as fast as the server takes it
        value += 1
        ts = datetime.now(UTC)
        for node in nodes:
            await server.write_attribute_value(node.nodeid, ua.DataValue(
                ua.Variant(value, ua.VariantType.UInt32), SourceTimestamp=ts, ServerTimestamp=ts))
        await asyncio.sleep(0)


async def mb_source(port: int, n: int) -> None:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType as SimType
    from pymodbus.simulator import SimData, SimDevice

    dev = SimDevice(1, simdata=[SimData(0, count=n, values=0, datatype=SimType.REGISTERS)])
    server = ModbusTcpServer(dev, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    value = 0
    while True:
        value = (value + 1) % 65536
        await server.async_setValues(1, 16, 0, [value] * n)
        await asyncio.sleep(0.01)


async def run_connector(kind: str, mqtt_url: str, site: str, port: int, n: int, interval_ms: float,
                        batching: str) -> None:
    from oee_stream.bus import MqttSettings
    from oee_stream.connectors import build_connector, parse_connector

    machines = max(1, n // 50)
    if kind == "opcua":
        data: dict[str, Any] = {
            "kind": "opcua", "id": "bench-ua", "site": site, "endpoint": f"opc.tcp://127.0.0.1:{port}/bench/",
            "publishing_interval_ms": interval_ms, "sampling_interval_ms": 0, "timeout_s": 10,
            "nodes": [{"node_id": f"nsu=urn:oee-stream:bench;s=v{i}", "machine": f"m{i % machines}",
                       "signal": f"s{i // machines}"} for i in range(n)],
        }
    else:
        data = {
            "kind": "modbus", "id": "bench-mb", "site": site, "controller": f"tcp://127.0.0.1:{port}",
            "poll_interval_ms": interval_ms, "timeout_s": 5,
            "registers": [{"machine": f"m{i % machines}", "signal": f"s{i // machines}", "address": i,
                           "type": "uint16"} for i in range(n)],
        }
    data["publish"] = {"batching": batching}
    conn = build_connector(parse_connector(data), MqttSettings(mqtt_url))
    await conn.run()


def child_main(argv: list[str]) -> None:
    role = argv[0]
    if role == "ua-source":
        asyncio.run(ua_source(int(argv[1]), int(argv[2])))
    elif role == "mb-source":
        asyncio.run(mb_source(int(argv[1]), int(argv[2])))
    elif role == "connector":
        asyncio.run(run_connector(argv[1], argv[2], argv[3], int(argv[4]), int(argv[5]), float(argv[6]), argv[7]))


# ------------------------------------------------------------------------------------------ driver


def spawn_child(script: str, *args: str) -> subprocess.Popen[bytes]:
    """Run `script --child ARGS` (a benchmark's own child role) with the project on the path."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.Popen([sys.executable, script, "--child", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return spawn_child(__file__, *args)


def stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err.decode(errors="replace")[-800:]


def measure(kind: str, broker: Mosquitto, n: int, interval_ms: float, warmup: float, seconds: float,
            batching: str = "per_machine") -> dict[str, Any]:
    port = free_port()
    site = f"bench{kind}{os.getpid()}"
    source = spawn("ua-source" if kind == "opcua" else "mb-source", str(port), str(n))
    conn = None
    counter = Counter(broker.port, site)
    try:
        wait_port(port, 60)
        conn = spawn("connector", kind, broker.url, site, str(port), str(n), str(interval_ms), batching)
        deadline = time.monotonic() + 60
        while counter.read()[0] < n and time.monotonic() < deadline:
            if conn.poll() is not None:
                raise RuntimeError(f"connector exited: {stop(conn)}")
            time.sleep(0.1)
        time.sleep(warmup)
        s0, m0 = counter.read()
        c0, t0 = cpu_seconds(conn.pid), time.monotonic()
        cs0 = cpu_seconds(source.pid)
        time.sleep(seconds)
        s1, m1 = counter.read()
        c1, t1 = cpu_seconds(conn.pid), time.monotonic()
        cs1 = cpu_seconds(source.pid)
        got = s1 - s0
        return {"kind": kind, "n": n, "interval_ms": interval_ms, "seconds": t1 - t0, "samples": got,
                "rate": got / (t1 - t0), "messages": m1 - m0, "cpu": c1 - c0, "source_cpu": cs1 - cs0,
                "cpu_per_1000": (c1 - c0) / got * 1000 if got else float("nan"), "errors": counter.errors}
    finally:
        counter.close()
        err = stop(conn) if conn is not None else ""
        stop(source)
        if err and "Traceback" in err and "KeyboardInterrupt" not in err and "SIGTERM" not in err:
            print(f"   connector stderr tail: {err.strip()[-300:]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        child_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ua-vars", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--ua-publishing-ms", type=float, default=100.0)
    ap.add_argument("--mb-registers", type=int, nargs="*", default=[100, 2000])
    ap.add_argument("--mb-poll-ms", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--batching", choices=["per_signal", "per_machine"], default="per_machine",
                    help="the connectors' publish.batching (default per_machine: one _batch message per machine)")
    args = ap.parse_args(argv)
    broker = Mosquitto()
    rows = []
    try:
        print(f"oee-stream connector benchmark: private mosquitto {broker.url}, {os.cpu_count()} cpus, "
              f"{args.seconds:.0f} s per case after {args.warmup:.0f} s warm-up, publish.batching {args.batching}")
        for n in args.ua_vars:
            rows.append(measure("opcua", broker, n, args.ua_publishing_ms, args.warmup, args.seconds, args.batching))
        for n in args.mb_registers:
            rows.append(measure("modbus", broker, n, args.mb_poll_ms, args.warmup, args.seconds, args.batching))
    finally:
        broker.close()
    print(f"\n{'connector':<8} {'variables':>9} {'interval':>9} {'samples/s':>10} {'msgs/s':>8} "
          f"{'conn CPU %':>10} {'CPU ms/1000 samples':>19} {'source CPU %':>12}")
    for r in rows:
        what = "publish" if r["kind"] == "opcua" else "poll"
        print(f"{r['kind']:<8} {r['n']:>9} {r['interval_ms']:>6.0f}ms {r['rate']:>10.0f} "
              f"{r['messages'] / r['seconds']:>8.0f} {r['cpu'] / r['seconds'] * 100:>9.0f}% "
              f"{r['cpu_per_1000'] * 1000:>19.1f} {r['source_cpu'] / r['seconds'] * 100:>11.0f}%   ({what})")
    print("\nsamples/s = samples decoded by an MQTT subscriber per second; Modbus offers registers/poll interval,"
          "\nOPC UA offers whatever the source process manages to rewrite (its CPU is the last column; with 2"
          "\ncores the source, the connector, mosquitto and the subscriber compete).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
