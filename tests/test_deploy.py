"""Deployment files against the code they configure, without docker or systemd:

* docker-compose.yml: services, names and URLs agree; every OEE_* variable is one the code reads (the settings
  model, a connector file's ${VAR}, the TimescaleDB init script, the Grafana provisioning); every ${VAR} the
  file interpolates is in deploy/.env.example; mounts point at files that exist.
* systemd units: every command line is a real `oee-stream` command with real options; the environment
  (Environment=, the env file examples) names only variables the code reads.
* Mosquitto: the ACL lets each connector publish exactly its topics as src/oee_stream/bus.py builds them
  (samples, batches, status, last will) and nothing of the engine's; then a real mosquitto started from
  deploy/mosquitto/mosquitto.conf (TLS, password file, the ACL) carries samples from `oee-stream connectors`
  (the edge-box command) to the engine's user, and drops what the ACL forbids.
"""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from oee_stream import bus
from oee_stream.connectors import load_connectors
from oee_stream.embedded import free_port
from oee_stream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SITE = "alu-works"
SIM_ENV = {"OEE_SIM_OPCUA_ENDPOINT": "opc.tcp://127.0.0.1:4840/oee-stream/sim/",
           "OEE_SIM_MODBUS_CONTROLLER": "tcp://127.0.0.1:5020"}


def settings_vars() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def connector_vars() -> set[str]:
    """Variables the shipped connector files refer to as ${NAME} or ${NAME:-default} (commented examples too)."""
    names: set[str] = set()
    for f in (ROOT / "connectors").glob("*.yaml"):
        names |= set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", f.read_text()))
    return names


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------ compose


def test_compose_oee_stream_environment_is_read_by_the_code() -> None:
    services = compose()["services"]
    env = services["oee-stream"]["environment"]
    known = settings_vars() | connector_vars()
    unknown = {k for k in env if k.startswith("OEE_")} - known
    assert not unknown, f"docker-compose.yml sets variables nothing reads: {sorted(unknown)}"
    # The URLs name the compose services, with the ports they listen on.
    assert re.fullmatch(r"postgresql://oee_owner:[^@]+@db:5432/oee", env["OEE_DATABASE_URL"])
    assert env["OEE_MQTT_URL"] == "mqtt://mqtt:1883"
    assert env["OEE_API_HOST"] == "0.0.0.0" and f"{env['OEE_API_PORT']}:{env['OEE_API_PORT']}" in \
        services["oee-stream"]["ports"]
    # The board is opened without an API key in the evaluation stack, as in `make demo`.
    assert env["OEE_ANONYMOUS_READ"] == "true"
    # The spool and recordings live on the named volume.
    assert f"oee-state:{env['OEE_DATA_DIR']}" in services["oee-stream"]["volumes"]
    # Settings parse from exactly this environment (no unknown or badly typed values).
    resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    s = Settings(_env_file=None, **{k.removeprefix("OEE_").lower(): v for k, v in resolved.items()})  # type: ignore[call-arg]
    assert s.anonymous_read is True and s.api_port == 8000


def test_compose_database_init_gets_the_variables_it_uses() -> None:
    services = compose()["services"]
    db = services["db"]
    init = (DEPLOY / "timescaledb" / "initdb.sh").read_text()
    used = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", init)) - {"POSTGRES_USER"}  # the image sets POSTGRES_USER
    required = {v for v in used if not re.search(rf"\$\{{{v}:-", init)}
    missing = required - set(db["environment"])
    assert not missing, f"initdb.sh needs {sorted(missing)} in the db service's environment"
    mounts = {m if isinstance(m, str) else f"{m['source']}:{m['target']}" for m in db["volumes"]}
    assert "./timescaledb/setup.sql:/opt/oee/setup.sql:ro" in mounts
    assert "./timescaledb/initdb.sh:/docker-entrypoint-initdb.d/50-oee.sh" in mounts
    assert "setup.sql" in init and "/opt/oee/setup.sql" in init
    # The owner password the service connects with is the one the init script gives oee_owner.
    assert "OEE_DB_OWNER_PASSWORD" in services["oee-stream"]["environment"]["OEE_DATABASE_URL"]
    grafana = services["grafana"]["environment"]
    assert grafana["OEE_GRAFANA_DB_PASSWORD"] == db["environment"]["OEE_GRAFANA_DB_PASSWORD"]
    assert grafana["OEE_GRAFANA_DB_HOST"] == "db:5432"


def test_compose_interpolated_variables_are_in_env_example() -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    interpolated = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = env_file(DEPLOY / ".env.example")
    assert interpolated == set(example), (sorted(interpolated), sorted(example))
    for name, value in example.items():  # the example shows the same fallback the compose file uses
        assert f"${{{name}:-{value}}}" in text, name


def test_compose_references_are_coherent() -> None:
    doc = compose()
    services = doc["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, (name, dep)
        for m in svc.get("volumes", []):
            src = m["source"] if isinstance(m, dict) else m.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), (name, src)
            else:
                assert src in doc["volumes"], (name, src)
    build = services["oee-stream"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    for line in build["dockerfile_inline"].splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"]:
            for src in parts[1:-1]:
                assert (context / src).exists(), f"COPY {src}: not in the build context"
    cmd = re.search(r'CMD \[(.*)\]', build["dockerfile_inline"]).group(1)  # type: ignore[union-attr]
    assert_cli([a.strip().strip('"') for a in cmd.split(",")], "docker-compose.yml CMD")


# ------------------------------------------------------------------------------------------ systemd


def cli_commands() -> dict[str, set[str]]:
    """`oee-stream` subcommands and the option names each accepts."""
    import typer.main

    from oee_stream.cli import app

    group = typer.main.get_command(app)
    out: dict[str, set[str]] = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        out[name] = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    return out


def assert_cli(args: list[str], where: str) -> None:
    commands = cli_commands()
    assert args and args[0] in commands, f"{where}: `oee-stream {' '.join(args)}`: no such command"
    for a in args[1:]:
        if a.startswith("--"):
            assert a.split("=")[0] in commands[args[0]], f"{where}: `oee-stream {args[0]}` has no option {a}"


def units() -> dict[str, configparser.ConfigParser]:
    out = {}
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.optionxform = str  # type: ignore[assignment,method-assign]
        cp.read_string(unit.read_text())
        out[unit.name] = cp
    return out


def test_systemd_units_run_real_commands() -> None:
    found = set()
    for name, cp in units().items():
        svc = cp["Service"]
        for key in ("ExecStartPre", "ExecStart"):
            if key not in svc:
                continue
            argv = shlex.split(svc[key])
            assert argv[0] == "/opt/oee-stream/venv/bin/oee-stream", (name, key)
            assert_cli(argv[1:], f"{name} {key}")
            if key == "ExecStart":
                found.add(argv[1])
    # Engine and API (with server-side connectors), connectors on edge boxes, schema migration.
    assert found == {"run", "connectors", "migrate"}


def test_systemd_environment_is_read_by_the_code() -> None:
    known = settings_vars() | connector_vars()
    env_files = {"oee-stream.service": "oee-stream.env.example",
                 "oee-stream-migrate.service": "oee-stream.env.example",
                 "oee-stream-connectors.service": "oee-stream-connectors.env.example"}
    for name, cp in units().items():
        svc = cp["Service"]
        assert svc["EnvironmentFile"].endswith(env_files[name].replace(".example", "").replace("oee-stream-", ""))
        names = set(env_file(DEPLOY / "systemd" / env_files[name]))
        for line in (DEPLOY / "systemd" / name).read_text().splitlines():
            if line.startswith("Environment="):
                names.add(line.removeprefix("Environment=").split("=")[0])
        assert names <= known, (name, sorted(names - known))
        # Every ${VAR} the command lines use is set by the unit.
        for key in ("ExecStartPre", "ExecStart"):
            for var in re.findall(r"\$\{([A-Z_]+)\}", svc.get(key, "")):
                assert var in names, (name, key, var)
    server = env_file(DEPLOY / "systemd" / "oee-stream.env.example")
    assert {"OEE_DATABASE_URL", "OEE_MQTT_URL", "OEE_MQTT_USERNAME", "OEE_MQTT_PASSWORD", "OEE_MQTT_CA_FILE"} <= set(server)
    assert server["OEE_MQTT_URL"].startswith("mqtts://") and server["OEE_MQTT_USERNAME"] == "oee-engine"
    edge = env_file(DEPLOY / "systemd" / "oee-stream-connectors.env.example")
    assert edge["OEE_MQTT_URL"].startswith("mqtts://") and "OEE_DATABASE_URL" not in edge
    assert edge["OEE_MQTT_USERNAME"] in acl_users()


# ------------------------------------------------------------------------------------------ mosquitto


def acl_users() -> dict[str, list[tuple[str, str]]]:
    """deploy/mosquitto/acl as {user: [(access, pattern)]}."""
    users: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in (DEPLOY / "mosquitto" / "acl").read_text().splitlines():
        line = raw.split("#")[0].strip() if raw.lstrip().startswith("#") else raw.strip()
        if not line:
            continue
        parts = line.split()
        if parts[0] == "user":
            current = users.setdefault(parts[1], [])
        elif parts[0] == "topic":
            assert current is not None, f"topic line outside a user block: {raw}"
            access, pattern = (parts[1], parts[2]) if len(parts) == 3 else ("readwrite", parts[1])
            current.append((access, pattern))
        else:
            raise AssertionError(f"unexpected ACL line: {raw}")
    return users


def matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching, as mosquitto applies ACL patterns."""
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(p) == len(t)


def may(user: str, access: str, topic: str) -> bool:
    return any(matches(pat, topic) and (acc == "readwrite" or acc == access) for acc, pat in acl_users()[user])


def test_acl_scopes_each_connector_to_its_topics() -> None:
    configs = load_connectors(ROOT / "connectors", env=SIM_ENV)
    assert configs
    machines = {"press-1", "caster-1", "furnace-1"}
    ids = {c.id for c in configs}
    for c in configs:
        assert c.site == SITE
        assert c.id in acl_users(), f"no ACL block for connector {c.id} (name its MQTT user after it)"
        own = {m for _, m, _ in c.signal_refs()}
        allowed = [bus.sample_topic(c.site, m, s) for _, m, s in c.signal_refs()]
        allowed += [bus.status_topic(c.site, c.id)]  # also its last will: mosquitto checks it at CONNECT
        if hasattr(bus, "batch_topic"):
            allowed += [bus.batch_topic(c.site, m) for m in own]
        for topic in allowed:
            assert may(c.id, "write", topic), (c.id, topic)
        forbidden = [bus.sample_topic(c.site, m, "state") for m in machines - own]
        forbidden += [bus.status_topic(c.site, other) for other in ids - {c.id}]
        forbidden += [bus.result_topic(c.site, m, "15m") for m in machines]
        forbidden += [bus.result_topic(c.site, "extrusion", "shift", "line"), bus.deadletter_topic(c.site)]
        forbidden += [bus.sample_topic("other-site", m, "state") for m in own]
        for topic in forbidden:
            assert not may(c.id, "write", topic), (c.id, topic)
        assert not any(acc in ("read", "readwrite") for acc, _ in acl_users()[c.id]), c.id


def test_acl_lets_the_engine_and_viewers_do_their_part() -> None:
    # The engine subscribes to the sample/status filter and publishes results and dead letters.
    assert may("oee-engine", "read", f"oee/v1/{SITE}/+/+")
    for topic in (bus.result_topic(SITE, "press-1", "15m"), bus.result_topic(SITE, "casthouse", "shift", "line"),
                  bus.result_topic(SITE, SITE, "24h", "site"), bus.deadletter_topic(SITE)):
        assert may("oee-engine", "write", topic), topic
        assert may("oee-viewer", "read", topic) == (topic != bus.deadletter_topic(SITE)), topic
        assert not may("oee-viewer", "write", topic)
    assert may("oee-viewer", "read", bus.status_topic(SITE, "opcua-demo"))
    assert not may("oee-viewer", "read", bus.sample_topic(SITE, "press-1", "state"))


# ------------------------------------------------------- a real mosquitto with the shipped configuration


def make_pki(d: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 (EC P-256), like the openssl commands of docs/deploy.md."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("oee-stream test CA")).issuer_name(name("oee-stream test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(pem_key(key))


@contextlib.contextmanager
def shipped_mosquitto(tmp: Path, passwords: dict[str, str]) -> Iterator[tuple[int, Path]]:
    """mosquitto with deploy/mosquitto/mosquitto.conf and acl; only paths and ports changed for the test."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    passwd_tool = shutil.which("mosquitto_passwd")
    if binary is None or passwd_tool is None:
        if os.environ.get("CI"):
            pytest.fail("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
        pytest.skip("mosquitto or mosquitto_passwd is not installed")
    certs = tmp / "certs"
    certs.mkdir()
    make_pki(certs)
    passwd = tmp / "passwd"
    for i, (user, pw) in enumerate(passwords.items()):
        subprocess.run([passwd_tool, *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw], check=True,
                       capture_output=True, timeout=30)
    shutil.copy(DEPLOY / "mosquitto" / "acl", tmp / "acl")
    for f in (passwd, tmp / "acl"):
        f.chmod(0o600)  # mosquitto 2.0.18+ warns about (and future versions refuse) world-readable files
    tls_port, local_port = free_port(), free_port()
    conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    replacements = {
        "/etc/mosquitto/passwd": str(passwd), "/etc/mosquitto/acl": str(tmp / "acl"),
        "/etc/mosquitto/certs/": f"{certs}/", "/var/lib/mosquitto/": f"{tmp}/",
        "listener 8883\n": f"listener {tls_port} 127.0.0.1\n", "listener 1883 127.0.0.1\n": f"listener {local_port} 127.0.0.1\n",
        "log_dest syslog\n": f"log_dest file {tmp / 'mosquitto.log'}\n",
    }
    for old, new in replacements.items():
        assert old in conf, f"mosquitto.conf no longer has {old!r}: update this test"
        conf = conf.replace(old, new)
    if os.geteuid() == 0:
        # Started as root, mosquitto drops to user `mosquitto`, which cannot enter pytest's private tmp dir.
        conf += "\nuser root\n"
    (tmp / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([binary, "-c", str(tmp / "mosquitto.conf")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", tls_port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.stdout else ""
                log = (tmp / "mosquitto.log").read_text() if (tmp / "mosquitto.log").exists() else ""
                raise RuntimeError(f"mosquitto did not start with the shipped configuration:\n{out}\n{log}")
            time.sleep(0.1)
        yield tls_port, certs / "ca.crt"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def tls_client(port: int, ca: Path, user: str | None, password: str | None) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{time.monotonic_ns()}",
                    protocol=mqtt.MQTTv311)
    if user is not None:
        c.username_pw_set(user, password)
    c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    return c


def connect_rc(port: int, ca: Path, user: str | None, password: str | None) -> int:
    """The CONNACK return code (0 = accepted)."""
    c = tls_client(port, ca, user, password)
    got: list[int] = []
    c.on_connect = lambda _c, _u, _f, rc, _p: got.append(rc.value)
    c.connect("127.0.0.1", port, keepalive=5)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    assert got, "no CONNACK"
    return got[0]


@pytest.mark.e2e
async def test_shipped_mosquitto_carries_edge_connector_samples_and_enforces_the_acl(tmp_path: Path) -> None:
    """`oee-stream connectors` with connectors/opcua-demo.yaml logs in as `opcua-demo` over TLS to a mosquitto
    running deploy/mosquitto/mosquitto.conf and acl; the engine's user receives its samples and its status,
    and nothing a connector may not publish."""
    from oee_stream.edge import run_connectors
    from oee_stream.simulators.runner import run_plant_simulator

    pw = {"oee-engine": "engine-pw", "opcua-demo": "opcua-pw", "modbus-demo": "modbus-pw"}
    with shipped_mosquitto(tmp_path, pw) as (port, ca):
        # Only the TLS listener is on the network, and it wants a known user.
        assert connect_rc(port, ca, None, None) != 0
        assert connect_rc(port, ca, "opcua-demo", "wrong") != 0
        assert connect_rc(port, ca, "oee-engine", pw["oee-engine"]) == 0
        with pytest.raises(OSError):
            plain = socket.create_connection(("127.0.0.1", port), timeout=2)
            plain.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x05\x00\x00")  # CONNECT without TLS
            if not plain.recv(4):
                raise OSError("closed")

        received: list[str] = []
        engine = tls_client(port, ca, "oee-engine", pw["oee-engine"])
        engine.on_message = lambda _c, _u, msg: received.append(msg.topic)
        engine.on_connect = lambda c, _u, _f, _rc, _p: c.subscribe(f"oee/v1/{SITE}/#", qos=1)
        engine.connect("127.0.0.1", port, keepalive=10)
        engine.loop_start()
        try:
            conn_dir = tmp_path / "connectors"
            conn_dir.mkdir()
            shutil.copy(ROOT / "connectors" / "opcua-demo.yaml", conn_dir)
            async with run_plant_simulator(ROOT / "simulators" / "demo.yaml", ROOT / "deploy" / "demo" / "plant.yaml",
                                           opcua_port=free_port(), modbus_port=free_port(), seed=3) as sim:
                os.environ["OEE_SIM_OPCUA_ENDPOINT"] = sim.opcua_endpoint or ""
                try:
                    settings = Settings(
                        _env_file=None, plant=ROOT / "deploy" / "demo" / "plant.yaml", connectors=conn_dir,  # type: ignore[call-arg]
                        mqtt_url=f"mqtts://127.0.0.1:{port}", mqtt_username="opcua-demo",
                        mqtt_password=pw["opcua-demo"], mqtt_ca_file=str(ca), data_dir=tmp_path / "var")
                    stop = asyncio.Event()
                    task = asyncio.create_task(run_connectors(settings, stop))
                    deadline = time.monotonic() + 30
                    want = {bus.sample_topic(SITE, "press-1", "state"), bus.sample_topic(SITE, "caster-1", "total"),
                            bus.status_topic(SITE, "opcua-demo")}
                    while not want <= set(received) and time.monotonic() < deadline:
                        assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
                        await asyncio.sleep(0.2)
                    assert want <= set(received), sorted(set(received))
                    # The connector's spool lives in the data directory (StateDirectory on a plant).
                    assert (tmp_path / "var").exists()
                    stop.set()
                    await asyncio.wait_for(task, 15)
                finally:
                    os.environ.pop("OEE_SIM_OPCUA_ENDPOINT", None)

            # What the ACL forbids a connector is dropped by the broker; what it allows arrives.
            rogue = tls_client(port, ca, "opcua-demo", pw["opcua-demo"])
            rogue.connect("127.0.0.1", port, keepalive=10)
            rogue.loop_start()
            try:
                attempts = {
                    bus.sample_topic(SITE, "furnace-1", "state"): False,  # another connector's machine
                    bus.result_topic(SITE, "press-1", "15m"): False,  # a forged KPI result
                    bus.status_topic(SITE, "modbus-demo"): False,  # another connector's status
                    bus.deadletter_topic(SITE): False,
                    bus.sample_topic(SITE, "press-1", "marker"): True,  # its own machine
                }
                received.clear()
                for topic in attempts:
                    rogue.publish(topic, b'{"v": 1, "samples": [{"ts": 1, "value": 1}]}', qos=1).wait_for_publish(5)
                deadline = time.monotonic() + 5
                while bus.sample_topic(SITE, "press-1", "marker") not in received and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
                got = {t: t in received for t in attempts}
                assert got == attempts, got
            finally:
                rogue.loop_stop()
                rogue.disconnect()
        finally:
            engine.loop_stop()
            engine.disconnect()


def test_deploy_doc_names_every_file_and_real_commands() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    files = [*sorted((DEPLOY / "systemd").iterdir()), DEPLOY / "mosquitto" / "acl",
             DEPLOY / "mosquitto" / "mosquitto.conf", DEPLOY / "timescaledb" / "setup.sql", DEPLOY / ".env.example"]
    for f in files:
        assert f.name in doc, f"docs/deploy.md does not mention {f.relative_to(ROOT)}"
    checked = 0
    for m in re.finditer(r"(?:/opt/oee-stream/venv/bin/|`)oee-stream ([a-z][a-z-]*)([^`\n]*)", doc):
        args = [m.group(1), *[a for a in m.group(2).split() if a.startswith("--")]]
        assert_cli(args, f"docs/deploy.md: {m.group(0)}")
        checked += 1
    assert checked >= 8
