// Andon board: polls GET /api/v1/machines (or follows /api/v1/stream when the API has it) and renders a
// tile per machine, grouped by line. No dependencies; runs on any browser a TV stick ships with.
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  const WINDOW = params.get("window") || "shift"; // which window's KPIs the tiles show
  const STALE_AFTER_MS = 10000; // no successful refresh for this long: grey the board out, say so
  // How often the API's event stream looks for changes (s): with the engine's tick this bounds how long a
  // PLC's state change takes to reach the TV (issue #6: under 2 s). `?stream_interval=1` halves the load.
  const STREAM_INTERVAL_S = Math.min(60, Math.max(0.2, parseFloat(params.get("stream_interval") || "") || 0.5));
  // An API key for plants without anonymous read: `/board?key=oee_…` once; it is kept in this browser's
  // localStorage and removed from the address bar. EventSource cannot send headers, so with a key the board
  // polls.
  let apiKey = params.get("key") || "";
  try {
    if (apiKey) {
      localStorage.setItem("oee-board-key", apiKey);
      params.delete("key");
      history.replaceState(null, "", location.pathname + (params.toString() ? "?" + params : ""));
    } else {
      apiKey = localStorage.getItem("oee-board-key") || "";
    }
  } catch (e) {
    /* storage disabled: use the key for this page view only */
  }
  const authHeaders = apiKey ? { "X-API-Key": apiKey } : {};

  const STATE_LABELS = {
    running: "Running",
    planned_stop: "Planned stop",
    unplanned_stop: "Unplanned stop",
    micro_stop: "Micro stop",
    unknown: "No data",
    unscheduled: "Not scheduled",
    planned_excluded: "Break",
  };
  const KNOWN_STATES = new Set(Object.keys(STATE_LABELS));
  // Calendar windows are "this" one (it started at a boundary and is still running); rolling ones look back.
  const WINDOW_LABELS = { shift: "Current shift", hour: "This hour", day: "Today", week: "This week" };
  // The result's flags (OEE-SEMANTICS): a supervisor must know when a figure cannot be taken at face value.
  const FLAG_LABELS = {
    performance_over_100: "P > 100 %: check ideal speed",
    partial_range: "hours missing",
    no_data: "no data",
    mixed_config: "config changed",
  };
  // Below this share of planned time backed by data the OEE figure says little: the tile shows it faded.
  const LOW_COVERAGE = 0.8;

  let cfg = { site: "", default_target_oee: 0.85, poll_ms: 1000, machines: {} };
  let pollMs = 1000;
  let skewMs = 0; // server clock minus browser clock, from the Date header
  let lastOk = 0;
  let lastError = "";
  let streaming = false;
  let timer = null;
  let layoutKey = "";
  const tiles = new Map(); // machine id -> {el, parts, since}
  let current = []; // the last machine listing rendered

  const $ = (sel, root) => (root || document).querySelector(sel);

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function pct(x) {
    return x === null || x === undefined || !isFinite(x) ? "–" : Math.round(x * 100) + "%";
  }

  function fmtCount(x) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    const digits = Math.abs(x) < 100 && x % 1 !== 0 ? 1 : 0;
    return x.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }

  function fmtDuration(ms) {
    if (!isFinite(ms)) return "";
    let s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    const two = (n) => String(n).padStart(2, "0");
    if (d > 0) return d + "d " + two(h) + "h";
    if (h > 0) return h + ":" + two(m) + ":" + two(sec);
    return m + ":" + two(sec);
  }

  function now() {
    return Date.now() + skewMs;
  }

  // Good count the shift should have made by now: the ideal count for the planned production time so far.
  // Exact from the additive fields when the API sends them; otherwise derived from the ratios
  // (total / (A·P) = total · PPT / net run time, the ideal count at the actual product mix).
  function shiftTarget(k, mcfg) {
    if (!k) return null;
    if (k.ppt_s !== undefined && k.ppt_s !== null) {
      if (k.net_run_time_s > 0 && k.total > 0) return (k.total * k.ppt_s) / k.net_run_time_s;
      if (mcfg && mcfg.ideal_per_h) return (k.ppt_s * mcfg.ideal_per_h) / 3600;
    }
    const a = k.availability, p = k.performance;
    if (a > 0 && p > 0 && k.total > 0) return k.total / (a * p);
    return null;
  }

  function buildTile(m) {
    const t = el("article", "tile");
    t.dataset.machine = m.id;
    const parts = {
      name: el("div", "name", m.name || m.id),
      since: el("div", "since"),
      state: el("div", "state"),
      reason: el("div", "reason"),
      oee: el("div", "oee"),
      count: el("div", "count"),
      apq: el("div", "apq"),
      note: el("div", "note"),
    };
    parts.oeeLabel = el("span", "label", "OEE " + WINDOW);
    parts.oeeValue = el("div", "value");
    parts.oeeTarget = el("span", "target badge");
    parts.oee.append(parts.oeeLabel, parts.oeeValue, parts.oeeTarget);
    parts.countLabel = el("span", "label", "Good / target");
    parts.countValue = el("div", "value");
    parts.countOf = el("div", "of");
    parts.count.append(parts.countLabel, parts.countValue, parts.countOf);
    parts.a = el("span", "a");
    parts.p = el("span", "p");
    parts.q = el("span", "q");
    parts.apq.append(parts.a, parts.p, parts.q);
    for (const k of ["name", "since", "state", "reason", "oee", "count", "note", "apq"]) t.append(parts[k]);
    return { el: t, parts, since: null };
  }

  function layout(list) {
    const key = list.map((m) => m.line + "/" + m.id).join(",");
    if (key === layoutKey) return;
    layoutKey = key;
    const board = $("#board");
    board.textContent = "";
    tiles.clear();
    const lines = [];
    const byLine = new Map();
    for (const m of list) {
      if (!byLine.has(m.line)) {
        const sec = el("section", "line");
        sec.dataset.line = m.line;
        sec.append(el("h2", "", m.line_name || m.line));
        const grid = el("div", "tiles");
        sec.append(grid);
        byLine.set(m.line, grid);
        lines.push(sec);
      }
      const tile = buildTile(m);
      tiles.set(m.id, tile);
      byLine.get(m.line).append(tile.el);
    }
    board.append(...lines);
    if (!list.length) board.append(el("p", "empty", "No machines in the plant model."));
  }

  function update(m) {
    const tile = tiles.get(m.id);
    if (!tile) return;
    const p = tile.parts;
    const state = KNOWN_STATES.has(m.state) ? m.state : "unknown";
    const cls = state === "unscheduled" || state === "planned_excluded" ? "st-off" : "st-" + state;
    tile.el.className = "tile " + cls;
    tile.el.dataset.state = m.state || "unknown";
    p.state.textContent = m.state ? STATE_LABELS[state] : "No data";
    p.reason.textContent = m.reason || "";
    tile.since = m.state_since ? Date.parse(m.state_since) : null;

    const mcfg = cfg.machines[m.id] || {};
    const target = mcfg.target_oee !== undefined ? mcfg.target_oee : cfg.default_target_oee;
    const k = (m.kpis || {})[WINDOW];
    p.oeeValue.textContent = k ? pct(k.oee) : "–";
    p.oeeTarget.textContent = "target " + pct(target);
    let grade = "";
    if (k && k.oee !== null && k.oee !== undefined) {
      grade = k.oee >= target ? "ok" : k.oee >= target - 0.1 ? "near" : "low";
    }
    p.oeeValue.className = "value" + (grade ? " badge " + grade : "");
    tile.el.dataset.oee = k && k.oee !== null && k.oee !== undefined ? String(k.oee) : "";

    const tgt = shiftTarget(k, mcfg);
    p.countValue.textContent = k ? fmtCount(k.good) : "–";
    p.countOf.textContent = "/ " + (tgt === null ? "–" : fmtCount(tgt)) + " " + (m.unit || "");
    p.countValue.className = "value" + (k && tgt ? " badge " + (k.good >= tgt * 0.95 ? "ok" : k.good >= tgt * 0.8 ? "near" : "low") : "");

    p.a.textContent = "A " + pct(k && k.availability);
    p.p.textContent = "P " + pct(k && k.performance);
    p.q.textContent = "Q " + pct(k && k.quality);

    // Coverage is reported beside every KPI: 24 % OEE over a shift that was 60 % `unknown` is not 24 %.
    const cov = k && typeof k.coverage === "number" && isFinite(k.coverage) ? k.coverage : null;
    const flags = (k && k.flags) || [];
    const notes = [];
    // Rounded down: 99.6 % covered must not read "coverage 100 %".
    if (cov !== null && cov < 1) notes.push("coverage " + Math.floor(cov * 100) + " %");
    for (const f of flags) notes.push(FLAG_LABELS[f] || f.replace(/_/g, " "));
    p.note.textContent = notes.join(" · ");
    p.note.hidden = notes.length === 0;
    tile.el.classList.toggle("low-coverage", cov !== null && cov < LOW_COVERAGE);
    tile.el.dataset.coverage = cov === null ? "" : String(cov);
    tile.el.dataset.flags = flags.join(",");
  }

  function tick() {
    const t = now();
    $("#clock").textContent = new Date(t).toLocaleTimeString([], { hour12: false });
    for (const tile of tiles.values()) {
      tile.parts.since.textContent = tile.since ? fmtDuration(t - tile.since) : "";
    }
    const stale = lastOk > 0 && Date.now() - lastOk > STALE_AFTER_MS;
    document.body.classList.toggle("stale", stale || (lastOk === 0 && lastError !== ""));
    const banner = $("#banner");
    if (stale || (lastOk === 0 && lastError)) {
      banner.hidden = false;
      banner.textContent =
        "NO CONNECTION to oee-stream" +
        (lastOk ? " · last update " + new Date(lastOk + skewMs).toLocaleTimeString([], { hour12: false }) : "") +
        (lastError ? " · " + lastError : "");
    } else {
      banner.hidden = true;
    }
  }

  function render(list) {
    current = list;
    layout(list);
    for (const m of list) update(m);
    const k = list.map((m) => (m.kpis || {})[WINDOW]).find((x) => x);
    $("#window-label").textContent = WINDOW_LABELS[WINDOW] || "Last " + WINDOW;
    if (k && k.start) {
      const s = new Date(k.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
      $("#window-label").textContent += " since " + s;
    }
    tick();
  }

  async function refresh() {
    try {
      const r = await fetch("/api/v1/machines", {
        cache: "no-store",
        headers: Object.assign({ Accept: "application/json" }, authHeaders),
      });
      if (!r.ok) throw new Error("API answered " + r.status);
      const date = r.headers.get("Date");
      if (date) {
        // The Date header has one-second resolution: only correct clocks that are clearly off.
        const d = Date.parse(date) + 500 - Date.now();
        skewMs = Math.abs(d) > 2000 ? d : 0;
      }
      render(await r.json());
      received();
    } catch (e) {
      lastError = String((e && e.message) || e);
      tick();
    }
  }

  function schedule() {
    clearTimeout(timer);
    // With an event stream, polling is only a safety net.
    timer = setTimeout(async () => {
      await refresh();
      schedule();
    }, streaming ? Math.max(10000, pollMs) : pollMs);
  }

  // Live updates from GET /api/v1/stream (Server-Sent Events) when the API has it: `machines` events carry
  // the same JSON as /api/v1/machines, `state` events one machine's {machine, state, reason, state_since}.
  // Any other event just triggers a refresh. Feature-detected from the OpenAPI document, so an API without
  // the stream never sees a request for it; `?stream=0` forces polling.
  function poke() {
    if (poke.pending) return;
    poke.pending = true;
    setTimeout(async () => {
      poke.pending = false;
      await refresh();
    }, 50);
  }

  function received() {
    lastOk = Date.now();
    lastError = "";
  }

  async function maybeStream() {
    if (!window.EventSource || params.get("stream") === "0" || apiKey) return;
    try {
      const r = await fetch("/openapi.json", { cache: "no-store", headers: authHeaders });
      if (!r.ok) return;
      const spec = await r.json();
      if (!spec.paths || !spec.paths["/api/v1/stream"]) return;
    } catch (e) {
      return;
    }
    const es = new EventSource("/api/v1/stream?interval_s=" + STREAM_INTERVAL_S);
    es.onopen = () => {
      streaming = true;
      document.body.dataset.mode = "stream";
      schedule();
    };
    es.onmessage = poke;
    es.addEventListener("machines", (ev) => {
      let list;
      try {
        list = JSON.parse(ev.data);
      } catch (e) {
        list = null;
      }
      if (!Array.isArray(list)) return poke();
      render(list);
      received();
    });
    es.addEventListener("state", (ev) => {
      let s;
      try {
        s = JSON.parse(ev.data);
      } catch (e) {
        s = null;
      }
      const m = s && current.find((x) => x.id === s.machine);
      if (!m) return poke();
      Object.assign(m, { state: s.state, reason: s.reason, state_since: s.state_since });
      update(m);
      received();
      tick();
    });
    for (const name of ["kpi", "kpis", "machine", "result"]) es.addEventListener(name, poke);
    es.onerror = () => {
      // EventSource reconnects by itself; meanwhile poll at full speed.
      streaming = false;
      document.body.dataset.mode = "poll";
      schedule();
    };
  }

  async function start() {
    try {
      const r = await fetch("/board/config.json", { cache: "no-store", headers: authHeaders });
      if (r.ok) cfg = Object.assign(cfg, await r.json());
    } catch (e) {
      /* the defaults do */
    }
    const fromUrl = parseFloat(params.get("poll") || "");
    pollMs = isFinite(fromUrl) && fromUrl > 0 ? fromUrl * 1000 : cfg.poll_ms || 1000;
    if (cfg.site) {
      $("#site").textContent = cfg.site;
      document.title = cfg.site + " · andon";
    }
    document.body.dataset.mode = "poll";
    await refresh();
    schedule();
    setInterval(tick, 500);
    maybeStream();
  }

  start();
})();
