// The /ops dashboard: GET /ops/data every second, appended to charts (uPlot).
//
// One request at a time per page, the next one REFRESH_MS after the last one started
// (or at once if it took longer): the server answers every viewer from one shared doctor
// sample, taken at most once a second. On the public port the data needs
// `Authorization: Bearer <METRICS_TOKEN>`: the token comes from `#token=...` once or
// from the form, and stays in this tab's sessionStorage.
(() => {
  "use strict";

  const REFRESH_MS = 1000;
  // Five minutes at one point a second.
  const MAX_POINTS = 300;
  const TOKEN_KEY = "vt.opsToken";
  const COLOURS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bf8700", "#57606a"];
  // [chart id, title, [[point name, label], ...], unit]
  const CHARTS = [
    ["pools", "PgBouncer pools: clients and server connections", [
      ["cl_active", "cl_active"], ["cl_waiting", "cl_waiting"],
      ["sv_active", "sv_active"], ["sv_idle", "sv_idle"]], ""],
    ["maxwait", "PgBouncer maxwait: the oldest waiting client", [["maxwait_s", "maxwait"]], "s"],
    ["postgres", "PostgreSQL connections against max_connections", [
      ["pg_connections", "client backends"], ["pg_usable_connections", "usable"],
      ["pg_max_connections", "max_connections"]], ""],
    ["app", "App pool of this API process (psycopg_pool get_stats())", [
      ["app_pool_size", "connections"], ["app_pool_idle", "idle"],
      ["app_pool_waiting", "requests waiting"], ["app_pool_max", "max"]], ""],
    ["tasks", "Tasks by status", [
      ["pending", "pending"], ["runnable", "runnable"], ["running", "running"]], ""],
    ["finished", "Tasks finished a minute (average of the last 10 min)", [
      ["completed_per_min", "completed"], ["failed_per_min", "failed"]], "/min"],
    ["xacts", "PgBouncer transactions", [["xact_per_s", "transactions"]], "/s"],
    ["lag", "Queue lag: the oldest runnable pending task", [["queue_lag_s", "lag"]], "s"],
    ["wait", "PgBouncer wait per transaction", [["avg_wait_ms", "avg wait"]], "ms"],
  ];

  const $ = (id) => document.getElementById(id);
  const state = {
    token: takeToken(),
    times: [],
    series: {},
    charts: {},
    last: null,
    samples: 0,
    errors: 0,
    stopped: false,
  };
  window.opsState = state;
  for (const [, , lines] of CHARTS) for (const [name] of lines) state.series[name] = [];

  function takeToken() {
    const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (match) {
      const token = decodeURIComponent(match[1]);
      try { window.sessionStorage.setItem(TOKEN_KEY, token); } catch (_e) { /* kept in memory */ }
      // Out of the address bar and the history.
      window.history.replaceState(null, "", window.location.pathname + window.location.search);
      return token;
    }
    try { return window.sessionStorage.getItem(TOKEN_KEY); } catch (_e) { return null; }
  }

  // ---- charts --------------------------------------------------------------------------

  function makeCharts() {
    const grid = $("charts");
    for (const [id, title, lines, unit] of CHARTS) {
      const figure = document.createElement("section");
      figure.className = "chart";
      figure.id = "chart-" + id;
      figure.setAttribute("aria-labelledby", "chart-" + id + "-title");
      const heading = document.createElement("h2");
      heading.id = "chart-" + id + "-title";
      // "s", "ms" name the axis; a rate ("/s") is in the title already.
      heading.textContent = title + (unit && unit[0] !== "/" ? " (" + unit + ")" : "");
      const latest = document.createElement("p");
      latest.className = "latest";
      latest.id = "latest-" + id;
      latest.setAttribute("aria-live", "off");
      const plot = document.createElement("div");
      plot.className = "plot";
      plot.setAttribute("role", "img");
      plot.setAttribute("aria-label", title + ": " + lines.map((l) => l[1]).join(", ") + " over the last minutes");
      figure.append(heading, latest, plot);
      grid.append(figure);
      const options = {
        width: Math.max(240, plot.clientWidth || 400),
        height: 170,
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.1)] } },
        axes: [{ stroke: "#5f6b7a" }, { stroke: "#5f6b7a", size: 60 }],
        series: [{}].concat(lines.map(([, label], i) => ({
          label, stroke: COLOURS[i % COLOURS.length], width: 2,
          value: (_u, v) => (v == null ? "–" : format(v)),
        }))),
      };
      const data = [state.times].concat(lines.map(([name]) => state.series[name]));
      state.charts[id] = new window.uPlot(options, data, plot);
    }
    window.addEventListener("resize", resize);
  }

  function resize() {
    for (const [id] of CHARTS) {
      const chart = state.charts[id];
      const width = chart.root.parentElement.clientWidth;
      if (width > 0) chart.setSize({ width, height: 170 });
    }
  }

  function format(value) {
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(2);
  }

  function ingest(data) {
    const p = Object.assign({}, data.points);
    p.completed_per_min = p.completed_10m == null ? null : p.completed_10m / 10;
    p.failed_per_min = p.failed_10m == null ? null : p.failed_10m / 10;
    const at = Date.parse(data.taken_at) / 1000;
    if (state.times.length && at <= state.times[state.times.length - 1]) return; // the same sample
    state.times.push(at);
    for (const name of Object.keys(state.series)) state.series[name].push(p[name] == null ? null : p[name]);
    if (state.times.length > MAX_POINTS) {
      state.times.shift();
      for (const name of Object.keys(state.series)) state.series[name].shift();
    }
    state.samples += 1;
    for (const [id, , lines, unit] of CHARTS) {
      state.charts[id].setData([state.times].concat(lines.map(([name]) => state.series[name])));
      $("latest-" + id).textContent = lines.map(([name, label]) =>
        label + " " + (p[name] == null ? "–" : format(p[name]) + (unit[0] === "/" ? unit : unit ? " " + unit : ""))).join(" · ");
    }
  }

  // ---- the report ----------------------------------------------------------------------

  function renderReport(data) {
    const box = $("verdict-box");
    box.className = "verdict " + data.verdict.toLowerCase();
    $("verdict").textContent = data.verdict;
    $("verdict-text").textContent = data.verdict_text.replace(/^\w+ — /, "");
    const list = $("recommendations");
    list.replaceChildren(...data.doctor.recommendations.map((text) => {
      const item = document.createElement("li");
      item.textContent = text;
      return item;
    }));
    const pools = data.doctor.pgbouncer.pools || [];
    $("pools").tBodies[0].replaceChildren(...pools.filter((p) => p.database !== "pgbouncer").map((p) => row([
      p.database, p.user, p.cl_active, p.cl_waiting, p.sv_active, p.sv_idle,
      ((p.maxwait || 0) + (p.maxwait_us || 0) / 1e6).toFixed(1) + " s", p.pool_mode,
    ], [2, 3, 4, 5, 6])));
    $("checks").tBodies[0].replaceChildren(...data.doctor.checks.map((c) => {
      const tr = row([c.name, c.level, c.summary + (c.fix ? " — " + c.fix : "")], []);
      tr.children[1].className = "level " + c.level;
      if (c.level === "WARNING" || c.level === "CRITICAL") tr.className = "problem";
      return tr;
    }));
    const when = new Date(data.taken_at);
    $("updated").textContent = "sample " + when.toLocaleTimeString() + " · pid " + data.app_pool.pid;
  }

  function row(cells, numeric) {
    const tr = document.createElement("tr");
    cells.forEach((value, i) => {
      const td = document.createElement("td");
      td.textContent = value == null ? "" : String(value);
      if (numeric.includes(i)) td.className = "num";
      tr.append(td);
    });
    return tr;
  }

  function status(text) {
    const el = $("status");
    el.textContent = text || "";
    el.hidden = !text;
  }

  // ---- refreshing ----------------------------------------------------------------------

  async function refresh() {
    const started = performance.now();
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    let wait = REFRESH_MS;
    try {
      const response = await fetch("/ops/data", { headers, cache: "no-store" });
      if (response.status === 401) {
        askToken(state.token ? "That token was refused." : "");
        return; // until a token is given
      }
      if (response.status === 404) {
        status("/ops/data is not served on this port (METRICS_TOKEN is not set): open /ops on the metrics port instead.");
        wait = 5000;
      } else if (!response.ok) {
        state.errors += 1;
        status("GET /ops/data answered " + response.status + "; retrying.");
      } else {
        const data = await response.json();
        status("");
        ingest(data);
        renderReport(data);
        state.last = data;
      }
    } catch (error) {
      state.errors += 1;
      status("The API is unreachable (" + error.message + "); retrying.");
    }
    setTimeout(refresh, Math.max(0, wait - (performance.now() - started)));
  }

  function askToken(message) {
    const form = $("token-form");
    form.hidden = false;
    status(message);
    $("token").focus();
  }

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("token").value.trim();
      try { window.sessionStorage.setItem(TOKEN_KEY, state.token); } catch (_e) { /* memory */ }
      $("token").value = "";
      $("token-form").hidden = true;
      status("");
      refresh();
    });
    makeCharts();
    refresh();
  }

  start();
})();
