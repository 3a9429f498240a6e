"""The andon board at /board: served from the package, rendered in headless Chromium, and live.

* `test_board_renders_demo_machines`: the page against the real API and a real PostgreSQL seeded with known
  results, checking every figure a tile shows (stream and poll mode).
* `test_board_follows_a_state_change_in_the_simulator`: the issue's acceptance, through the whole pipeline
  (`running_service`): simulated PLC (OPC UA server) → OPC UA connector → MQTT broker → engine → PostgreSQL →
  API event stream → the page. A state change written to the simulated PLC must show on the page within 2 s.

Chromium is driven over the Chrome DevTools Protocol (websockets). Without a Chromium binary the browser
tests are skipped, except under CI (env CI set), where they fail: install Debian's `chromium` package.
`OEE_BOARD_SCREENSHOT=1` saves the board (seeded mid-shift data, after a breakdown) to docs/board.png.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI

from oee_stream.api import ApiSettings, create_app
from oee_stream.board import DEFAULT_TARGET_OEE, STATIC_FILES, board_router
from oee_stream.config import Plant
from oee_stream.embedded import free_port
from oee_stream.engine.result import TIME_CLASSES, KpiResult
from oee_stream.storage.writer import StateInterval, StorageWriter

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "deploy" / "demo" / "plant.yaml"
SCREENSHOT = ROOT / "docs" / "board.png"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_HINT = (
    "headless Chromium is needed for the andon board test: `apt-get install -y --no-install-recommends "
    "chromium` (Debian 12), or set OEE_CHROMIUM to a Chrome/Chromium binary"
)
LIVE_LIMIT_S = 2.0


def find_chromium() -> str | None:
    explicit = os.environ.get("OEE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(CHROMIUM_HINT, pytrace=False)
        pytest.skip(CHROMIUM_HINT)
    return binary


def _settings_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(ApiSettings)}


def has_stream(app: FastAPI) -> bool:
    return any(getattr(r, "path", None) == "/api/v1/stream" for r in app.routes)


def board_app(db_url: str, plant: Plant) -> FastAPI:
    """The API app with the board, whether or not create_app includes the board router already."""
    # Reading without credentials, as a TV on the shop floor does (when the API has that switch).
    extra: dict[str, Any] = {"anonymous_read": True} if "anonymous_read" in _settings_fields() else {}
    app = create_app(ApiSettings(database_url=db_url, plant=plant, **extra))
    if not any(getattr(r, "path", None) == "/board" for r in app.routes):
        app.include_router(board_router(plant))
    return app


# ------------------------------------------------------------------------------------- no browser


async def test_board_served_from_package_without_external_urls(plant: Plant) -> None:
    app = FastAPI()
    app.include_router(board_router(plant))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        page = await http.get("/board")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/board/static/board.js" in page.text and "/board/static/board.css" in page.text
        assert {"board.js", "board.css", "index.html"} <= set(STATIC_FILES)
        for name in STATIC_FILES:
            resp = await http.get(f"/board/static/{name}")
            assert resp.status_code == 200, name
            # Everything is served by us: no CDN, no web fonts, no absolute URLs.
            for needle in ("http://", "https://", "//cdn", "@import", "fonts.googleapis"):
                assert needle not in resp.text, (name, needle)
        assert (await http.get("/board/static/board.js")).headers["content-type"].startswith("text/javascript")
        for bad in ("../__init__.py", "..%2F__init__.py", "nope.js", "%2e%2e/%2e%2e/config.py"):
            assert (await http.get(f"/board/static/{bad}")).status_code == 404, bad
        cfg = (await http.get("/board/config.json")).json()
    assert cfg["site"] == "Demo aluminium works"
    assert set(cfg["machines"]) == {"press-1", "furnace-1", "caster-1"}
    assert cfg["machines"]["press-1"]["target_oee"] == DEFAULT_TARGET_OEE
    assert cfg["machines"]["press-1"]["ideal_per_h"] == pytest.approx(1800.0)  # 2.0 s per billet
    assert cfg["machines"]["furnace-1"]["ideal_per_h"] == pytest.approx(36.0)


async def test_board_targets_set_through_the_api_replace_the_plant_files(db: str, plant: Plant) -> None:
    """`PUT /api/v1/admin/config/targets` is what the board's OEE target follows, at once."""
    from oee_stream.storage import edits

    app = board_app(db, plant)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        before = (await http.get("/board/config.json")).json()
        assert before["machines"]["press-1"]["target_oee"] == DEFAULT_TARGET_OEE
        async with await psycopg.AsyncConnection.connect(db, autocommit=True) as conn:
            await edits.put_config(conn, "admin", "targets", {"press-1": {"target_oee": 0.5},
                                                              "caster-1": {"units_per_hour": 100}})
        cfg = (await http.get("/board/config.json")).json()
    assert cfg["machines"]["press-1"]["target_oee"] == 0.5
    assert cfg["machines"]["caster-1"]["target_oee"] == DEFAULT_TARGET_OEE  # no target_oee set for it
    assert cfg["machines"]["press-1"]["ideal_per_h"] == before["machines"]["press-1"]["ideal_per_h"]


def test_board_without_plant_uses_world_class_target() -> None:
    from oee_stream.board import board_config

    cfg = board_config(None)
    assert cfg["default_target_oee"] == 0.85 and cfg["machines"] == {}


# ------------------------------------------------------------------------------------------ data


def kpi(machine: str, window: str, start: float, end: float, *, unit: str, ideal_s: float,
        running: float, planned: float = 0.0, unplanned: float = 0.0, total: float, good: float,
        state: str, reason: str | None, since: float) -> KpiResult:
    """A machine result consistent with OEE-SEMANTICS section 2, as the engine would store it."""
    sec = dict.fromkeys(TIME_CLASSES, 0.0)
    sec.update(running=running, planned_stop=planned, unplanned_stop=unplanned)
    ppt = running + planned + unplanned
    net = ideal_s * total
    return KpiResult(
        entity=machine, entity_kind="machine", window=window, start=start, end=end, seconds=sec,
        total=total, good=good, reject=total - good, unit=unit,
        availability=running / ppt, performance=net / running, quality=good / total, oee=net / ppt * good / total,
        teep=None, utilization=1.0, coverage=1.0, ppt_s=ppt, run_time_s=running, net_run_time_s=net,
        fully_productive_s=ideal_s * good, stops=1 if unplanned else 0, mtbf_s=None, mttr_s=None,
        six_big_losses_s={}, downtime_by_reason_s={}, state=state, reason=reason, state_since=since,
        ideal_speed_per_h=3600.0 / ideal_s,
    )


async def seed(db: str, now: float) -> dict[str, Any]:
    """Shift and 15m results plus open state intervals for the three demo machines."""
    shift_start = now - 3 * 3600.0
    since = {"press-1": now - 754.0, "furnace-1": now - 3 * 60.0, "caster-1": now - 95.0}
    rows = [
        # machine, unit, ideal s/unit, running, planned, unplanned, total, good, state, reason
        ("press-1", "billets", 2.0, 9000.0, 1200.0, 600.0, 4000.0, 3900.0, "running", None),
        ("furnace-1", "t", 100.0, 10000.0, 800.0, 0.0, 90.0, 88.0, "running", "melting"),
        ("caster-1", "logs", 1.5, 7000.0, 2500.0, 1300.0, 3800.0, 3700.0, "planned_stop", "mould change"),
    ]
    results: list[KpiResult] = []
    intervals: list[StateInterval] = []
    for m, unit, ideal, run, pl, un, total, good, state, reason in rows:
        for window, start in (("shift", shift_start), ("15m", now - 900.0)):
            f = (now - start) / (now - shift_start)
            results.append(kpi(m, window, start, now, unit=unit, ideal_s=ideal, running=run * f, planned=pl * f,
                               unplanned=un * f, total=round(total * f, 1), good=round(good * f, 1),
                               state=state, reason=reason, since=since[m]))
        intervals.append(StateInterval(m, since[m], None, state, reason, "plc"))
    async with StorageWriter(db) as writer:
        await writer.write_results(results)
        await writer.write_state_intervals(intervals)
        await writer.flush(10)
    return {"since": since, "shift_start": shift_start}


@contextlib.asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[tuple[str, uvicorn.Server, asyncio.Task[None]]]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", access_log=False, timeout_graceful_shutdown=1))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # uvicorn < 0.29
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # >= 0.29
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", server, task
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


# ----------------------------------------------------------------------------------------- Chrome


class Cdp:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        async with asyncio.timeout(timeout):
            while True:
                reply = json.loads(await self.ws.recv())
                if reply.get("id") == msg_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

    async def eval(self, expression: str) -> Any:
        res = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                   "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, poll: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = await self.eval(expression)
            if last:
                return last
            await asyncio.sleep(poll)
        raise AssertionError(f"not true within {timeout}s: {expression} (last: {last!r})")


@contextlib.asynccontextmanager
async def browser(binary: str, url: str, tmp: Path) -> AsyncIterator[Cdp]:
    import websockets

    profile = tmp / "chromium-profile"
    profile.mkdir()
    log_path = tmp / "chromium.log"
    args = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-default-apps", "--no-first-run", "--no-default-browser-check",
        "--mute-audio", "--hide-scrollbars", "--window-size=1920,1080", "--force-device-scale-factor=1",
        "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}", url,
    ]
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Chromium did not start (exit {proc.returncode}):\n{log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            page: dict[str, Any] | None = None
            while page is None:
                targets = (await http.get("/json/list")).json()
                page = next((t for t in targets if t.get("type") == "page"), None)
                if page is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no page target in {targets}")
                    await asyncio.sleep(0.1)
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20) as ws:
            cdp = Cdp(ws)
            await cdp.send("Emulation.setDeviceMetricsOverride",
                           {"width": 1920, "height": 1080, "deviceScaleFactor": 1, "mobile": False})
            yield cdp
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 5)


TILES_JS = """JSON.stringify([...document.querySelectorAll('[data-machine]')].map(t => ({
  id: t.dataset.machine, state: t.dataset.state, cls: t.className,
  line: t.closest('[data-line]').dataset.line,
  name: t.querySelector('.name').textContent, label: t.querySelector('.state').textContent,
  reason: t.querySelector('.reason').textContent, since: t.querySelector('.since').textContent,
  oee: t.querySelector('.oee .value').textContent, target: t.querySelector('.oee .target').textContent,
  good: t.querySelector('.count .value').textContent, of: t.querySelector('.count .of').textContent,
  apq: t.querySelector('.apq').textContent,
  bg: getComputedStyle(t).backgroundColor, font: parseFloat(getComputedStyle(t.querySelector('.oee .value')).fontSize),
})))"""


def clock_s(text: str) -> int:
    """'12:34' or '1:02:03' as seconds."""
    secs = 0
    for part in text.split(":"):
        secs = secs * 60 + int(part)
    return secs


async def tiles(cdp: Cdp) -> dict[str, dict[str, Any]]:
    return {t["id"]: t for t in json.loads(await cdp.eval(TILES_JS))}


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["stream", "poll"])
async def test_board_renders_demo_machines(
    chromium: str, db: str, plant: Plant, tmp_path: Path, mode: str
) -> None:
    """Every figure of a tile, from known stored results. `stream`: the page follows /api/v1/stream; `poll`:
    GET /api/v1/machines. The live path from a PLC is test_board_follows_a_state_change_in_the_simulator."""
    t_start = time.monotonic()
    now = time.time()
    seeded = await seed(db, now)
    app = board_app(db, plant)
    if mode == "stream" and not has_stream(app):
        pytest.skip("the API has no /api/v1/stream yet; the board polls")
    query = "" if mode == "stream" else "?stream=0"
    async with serve(app) as (base, _, _), browser(chromium, f"{base}/board{query}", tmp_path) as cdp:
        await cdp.wait_for(f"!!document.body && document.body.dataset.mode === {mode!r}", timeout=10)
        await cdp.wait_for("document.querySelectorAll('[data-machine]').length === 3 && "
                           "document.querySelector('[data-machine] .oee .value').textContent !== ''", timeout=20)
        got = await tiles(cdp)
        assert set(got) == {"press-1", "furnace-1", "caster-1"}
        # Grouped by line, in plant order, with the display names of the plant model.
        order = json.loads(await cdp.eval(
            "JSON.stringify([...document.querySelectorAll('[data-line]')].map(s => s.dataset.line))"))
        assert order == ["extrusion", "casthouse"]
        assert got["press-1"]["line"] == "extrusion" and got["caster-1"]["line"] == "casthouse"
        assert got["press-1"]["name"] == "Extrusion press 1 (2500 t)"
        assert await cdp.eval("document.querySelector('#site').textContent") == "Demo aluminium works"

        press = got["press-1"]
        assert press["state"] == "running" and "st-running" in press["cls"] and press["label"] == "Running"
        assert press["bg"] == "rgb(19, 138, 54)"  # running green
        # Shift: PPT 10800 s, net 2.0 × 4000 = 8000 s, Q 3900/4000: OEE 8000/10800 × 0.975 = 72 %.
        assert press["oee"] == "72%" and press["target"] == "target 85%"
        assert "A 83%" in press["apq"] and "P 89%" in press["apq"] and "Q 98%" in press["apq"]
        # Good 3900 against the ideal count for the shift's PPT so far: 10800 s / 2.0 s = 5400.
        assert press["good"].replace(",", "") == "3900" and press["of"].replace(",", "") == "/ 5400 billets"
        in_state = time.time() - seeded["since"]["press-1"]  # 754 s when seeded, plus the start-up
        assert abs(clock_s(press["since"]) - in_state) <= 2.0, (press["since"], in_state)
        assert press["font"] >= 60, "the OEE figure must be readable from across a hall"
        caster = got["caster-1"]
        assert caster["state"] == "planned_stop" and caster["reason"] == "mould change"
        assert caster["bg"] == "rgb(31, 95, 209)"  # planned stop blue
        assert got["furnace-1"]["reason"] == "melting" and got["furnace-1"]["of"].endswith(" t")

        # Time in state ticks in the browser, between polls too.
        before = (await tiles(cdp))["caster-1"]["since"]
        await cdp.wait_for(f"document.querySelector('[data-machine=\"caster-1\"] .since').textContent !== {before!r}",
                           timeout=3)

        # A stop as the engine stores it: the tile turns red with the reason and restarts its clock.
        changed = time.time()
        with psycopg.connect(db, autocommit=True) as conn, conn.transaction():
            conn.execute("UPDATE state_intervals SET end_time = to_timestamp(%s) "
                         "WHERE machine_id = 'press-1' AND end_time IS NULL", (changed,))
            conn.execute("INSERT INTO state_intervals (machine_id, start_time, time_class, reason, reason_source) "
                         "VALUES ('press-1', to_timestamp(%s), 'unplanned_stop', 'die failure', 'plc')", (changed,))
        await cdp.wait_for("(() => { const t = document.querySelector('[data-machine=\"press-1\"]');"
                           " return t.dataset.state === 'unplanned_stop' &&"
                           " t.querySelector('.reason').textContent === 'die failure'; })()", timeout=10)
        press = (await tiles(cdp))["press-1"]
        assert press["label"] == "Unplanned stop" and press["bg"] == "rgb(211, 47, 47)"
        assert clock_s(press["since"]) <= 3
        print(f"board ({mode}): rendered and updated; test {time.monotonic() - t_start:.1f} s")

        # The documentation's picture: three hours into a shift, one machine just broke down. (The pipeline
        # test's plant starts with the test, so its shift is still mostly `unknown` and its OEE near 0.)
        if mode == "stream" and os.environ.get("OEE_BOARD_SCREENSHOT") == "1":
            await asyncio.sleep(1.5)  # past the red border pulse's first beat; the clock moves on
            shot = await cdp.send("Page.captureScreenshot", {"format": "png"})
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
    assert seeded["since"]["press-1"] < changed


@pytest.mark.e2e
async def test_board_shows_coverage_and_flags(chromium: str, db: str, plant: Plant, tmp_path: Path) -> None:
    """A figure over a window that is largely `unknown`, or flagged, must say so on the tile; calendar
    windows are labelled as what they are ("This hour", not "Last hour")."""
    now = time.time()
    hour_start = now - 1800.0
    sparse = kpi("press-1", "hour", hour_start, now, unit="billets", ideal_s=2.0, running=600.0, total=300.0,
                 good=300.0, state="running", reason=None, since=now - 60)
    sparse.seconds["unknown"] = 1200.0
    sparse.ppt_s = 1800.0
    sparse.coverage = 1 - 1200.0 / 1800.0  # 33 %
    sparse.oee = 600.0 / 1800.0
    fast = kpi("caster-1", "hour", hour_start, now, unit="logs", ideal_s=1.5, running=1800.0, total=1300.0,
               good=1300.0, state="running", reason=None, since=now - 60)
    fast.coverage = 0.9
    fast.flags = ["performance_over_100"]
    full = kpi("furnace-1", "hour", hour_start, now, unit="t", ideal_s=100.0, running=1800.0, total=15.0,
               good=15.0, state="running", reason=None, since=now - 60)
    async with StorageWriter(db) as writer:
        await writer.write_results([sparse, fast, full])
        await writer.flush(10)
    async with serve(board_app(db, plant)) as (base, _, _), \
            browser(chromium, f"{base}/board?window=hour&stream=0", tmp_path) as cdp:
        await cdp.wait_for("document.querySelectorAll('[data-machine]').length === 3 && "
                           "document.querySelector('[data-machine=\"press-1\"] .oee .value').textContent !== '–'",
                           timeout=20)
        notes = json.loads(await cdp.eval(
            "JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-machine]')].map(t => "
            "[t.dataset.machine, {note: t.querySelector('.note').textContent, shown: !t.querySelector('.note').hidden,"
            " low: t.classList.contains('low-coverage'), flags: t.dataset.flags,"
            " outline: getComputedStyle(t.querySelector('.oee .value')).outlineStyle}])))"))
        label = await cdp.eval("document.querySelector('#window-label').textContent")
    assert notes["press-1"]["note"] == "coverage 33 %" and notes["press-1"]["shown"]
    assert notes["press-1"]["low"] and notes["press-1"]["outline"] == "dashed"
    assert "coverage 90 %" in notes["caster-1"]["note"] and "P > 100 %" in notes["caster-1"]["note"]
    assert not notes["caster-1"]["low"] and notes["caster-1"]["flags"] == "performance_over_100"
    assert notes["furnace-1"] == {"note": "", "shown": False, "low": False, "flags": "", "outline": "none"}
    assert label.startswith("This hour"), label


@pytest.mark.e2e
async def test_board_says_so_when_the_api_is_down(chromium: str, db: str, plant: Plant, tmp_path: Path) -> None:
    await seed(db, time.time())
    async with serve(board_app(db, plant)) as (base, server, task):
        async with browser(chromium, f"{base}/board?poll=0.2", tmp_path) as cdp:
            await cdp.wait_for("document.querySelectorAll('[data-machine]').length === 3", timeout=20)
            assert await cdp.eval("document.querySelector('#banner').hidden") is True
            server.should_exit = True  # the API goes away; the board must not keep showing old news as live
            await asyncio.wait_for(task, 10)
            await cdp.wait_for("!document.querySelector('#banner').hidden", timeout=15)
            assert "NO CONNECTION" in await cdp.eval("document.querySelector('#banner').textContent")
            assert await cdp.eval("document.body.classList.contains('stale')") is True
            # The tiles stay (greyed out): the last known picture is better than a blank TV.
            assert await cdp.eval("document.querySelectorAll('[data-machine]').length") == 3


# ------------------------------------------------------------------------------- the whole pipeline

# The engine's tick for the pipeline test. The chain PLC → page is: OPC UA sampling (100 ms) and publishing
# (250 ms), one engine tick, the storage writer's flush (250 ms), the board's event stream looking for changes
# (every 0.5 s) and the render: with the default 1 s tick the worst phase is about 2.1 s, with 0.25 s about
# 1.4 s. OEE_BOARD_TEST_TICK_S=1 measures the default tick (docs/deploy.md, andon TVs).
PIPELINE_TICK_S = float(os.environ.get("OEE_BOARD_TEST_TICK_S", "0.25"))
# press-1's state table (deploy/demo/plant.yaml): 3 = die failure, 4 = billet starved; both unplanned stops.
STOP_CODES = {3: "die failure", 4: "billet starved"}

PRESS_JS = """(() => { const t = document.querySelector('[data-machine="press-1"]');
  return t ? JSON.stringify({state: t.dataset.state, reason: t.querySelector('.reason').textContent}) : null; })()"""


@pytest.mark.e2e
async def test_board_follows_a_state_change_in_the_simulator(
    chromium: str, fresh_db_url: str, mqtt_url: str, tmp_path: Path
) -> None:
    """Issue #6: the board renders the demo machines of the running simulated plant, and a state change in
    the simulator (a PLC writes a new state code) shows on the page within 2 s."""
    from oee_stream.runtime import running_service
    from oee_stream.settings import Settings

    settings = Settings(
        plant=DEMO, connectors=ROOT / "connectors", scenario=ROOT / "simulators" / "demo.yaml",
        database_url=fresh_db_url, mqtt_url=mqtt_url, api_port=free_port(), tick_s=PIPELINE_TICK_S,
        data_dir=tmp_path / "var", anonymous_read=True,
    )
    t_start = time.monotonic()
    async with running_service(settings, embedded=False, simulate=True, seed=7) as run, \
            browser(chromium, f"{run.api_url}/board", tmp_path) as cdp:
        await cdp.wait_for("!!document.body && document.body.dataset.mode === 'stream'", timeout=15)
        # Every demo machine has a tile with a state and figures from the live engine.
        await cdp.wait_for("(() => { const ts = [...document.querySelectorAll('[data-machine]')];"
                           " return ts.length === 3 && ts.every(t => t.dataset.state && t.dataset.state !== 'unknown'"
                           " && t.querySelector('.oee .value').textContent.endsWith('%')); })()", timeout=45)
        got = await tiles(cdp)
        assert set(got) == {"press-1", "furnace-1", "caster-1"}
        assert got["press-1"]["name"] == "Extrusion press 1 (2500 t)" and got["furnace-1"]["of"].endswith(" t")

        sim = run.simulator
        await asyncio.sleep(2 * PIPELINE_TICK_S + 1.5)  # the scenario's last change reaches the page first
        before = json.loads(await cdp.eval(PRESS_JS))
        code = 3 if before["reason"] != STOP_CODES[3] else 4
        reason = STOP_CODES[code]
        # A stop is shown at once with its PLC reason. Its class settles when the engine can know it: a stop
        # shorter than microstop_threshold_s is a micro stop (OEE-SEMANTICS section 1), so the tile shows
        # "Micro stop" first and "Unplanned stop" once the stop has lasted the threshold.
        stopped = f"(() => {{ const p = JSON.parse({PRESS_JS}); return p && p.reason === {reason!r} && " \
                  "['micro_stop', 'unplanned_stop'].includes(p.state); })()"
        t0 = time.monotonic()
        # The simulated PLC holds the stop (the scenario cannot overwrite it while we measure).
        await sim.force_state("press-1", code, reason)
        # Wait well past the limit so a slow pipeline is reported with its figure, not as a bare timeout.
        await cdp.wait_for(stopped, timeout=10 * LIVE_LIMIT_S, poll=0.02)
        delay = time.monotonic() - t0
        shown = json.loads(await cdp.eval(PRESS_JS))
        threshold = run.plant.policies.microstop_threshold_s
        await cdp.wait_for(f"JSON.parse({PRESS_JS}).state === 'unplanned_stop'", timeout=threshold + 2 * LIVE_LIMIT_S,
                           poll=0.05)
        settled = time.monotonic() - t0
        print(f"\nboard: press-1 {before['state']} → PLC state {code} ({reason}) written to the simulated PLC; on the "
              f"page as {shown['state']} after {delay:.2f} s (limit {LIVE_LIMIT_S:.0f} s), as unplanned_stop after "
              f"{settled:.2f} s (micro-stop threshold {threshold:g} s); engine tick {PIPELINE_TICK_S} s; "
              f"test {time.monotonic() - t_start:.1f} s")
        assert delay < LIVE_LIMIT_S, (
            f"a state change in the simulator took {delay:.2f} s to show on the board; issue #6 requires less than "
            f"{LIVE_LIMIT_S:.0f} s (PLC → OPC UA connector → MQTT → engine → PostgreSQL → /api/v1/stream → page)")
        press = (await tiles(cdp))["press-1"]
        assert press["label"] == "Unplanned stop" and press["bg"] == "rgb(211, 47, 47)"
        # Time in state counts from the stop's start (the PLC's change), not from its reclassification.
        assert abs(clock_s(press["since"]) - (time.monotonic() - t0)) <= 2.0, press["since"]



# ------------------------------------------------------------------------------------------ make demo


async def test_demo_opens_with_the_board(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                         plant: Plant) -> None:
    """`make demo` (`oee-stream demo`): the first URL it prints is the board, and with a display it opens the
    board in the browser."""
    import webbrowser

    from oee_stream import runtime
    from oee_stream.settings import Settings

    @contextlib.asynccontextmanager
    async def fake_service(settings: Settings, **_: Any) -> AsyncIterator[Any]:
        yield runtime.Running(plant, "postgresql://x", "mqtt://x", "http://127.0.0.1:8000", None)  # type: ignore[arg-type]

    opened: list[str] = []
    monkeypatch.setattr(runtime, "running_service", fake_service)
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    monkeypatch.setenv("DISPLAY", ":0")
    asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGINT)
    await runtime.serve_until_stopped(Settings(_env_file=None), embedded=True, simulate=True)  # type: ignore[call-arg]
    assert opened == ["http://127.0.0.1:8000/board"]
    urls = [line for line in capsys.readouterr().out.splitlines() if "http://" in line]
    assert urls and urls[0].split()[0] == "board" and urls[0].split()[2] == "http://127.0.0.1:8000/board", urls
