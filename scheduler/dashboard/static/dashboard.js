// The Tidal dashboard's page: state pushed by the scheduler over server-sent events
// (/events), drawn with Plotly and plain tables. Nothing here changes the cluster.
"use strict";

const WINDOW_S = 60;          // the task stream and latency charts show this much
const COLORS = { stream: "#c0392b", batch: "#2e6da4" };
const MARK_SYMBOLS = { suspend: "triangle-down", kill: "x", steal: "diamond" };
const LISTED = new Set(["executor_joined", "executor_lost", "executor_busy", "executor_back",
  "policy", "adaptive_switch", "decision_refused", "submit_refused"]);

let state = fresh();

function fresh() {
  return { scheduler: {}, status: null, slices: [], open: [], marks: [], latency: [],
           updates: 0 };
}

function text(value) {  // table cells are filled with textContent: nothing is parsed as HTML
  return value === null || value === undefined ? "" : String(value);
}

// Plotly reads a subset of HTML in its strings (axis labels, hover text): peers' and users'
// strings go to it with <, > and & as entities, which it shows as they are.
function plotlyText(value) {
  return text(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const [key, value] of Object.entries(attrs || {})) tr.dataset[key] = value;
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell);
    else if (typeof cell === "object" && cell !== null) {
      td.textContent = text(cell.text);
      if (cell.cls) td.className = cell.cls;
    } else td.textContent = text(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows, emptyText) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows);
  if (!rows.length && emptyText) {
    const cols = document.querySelectorAll(`#${tableId} thead th`).length;
    const tr = row([{ text: emptyText, cls: "empty" }]);
    tr.firstChild.colSpan = cols;
    body.appendChild(tr);
  }
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function merge(update) {
  if ("scheduler" in update) {  // the first push of a (re)connection: everything again
    state = fresh();
    state.scheduler = update.scheduler;
  }
  state.updates += 1;
  if (update.status) {
    state.status = update.status;
    const latency = (update.status.counters || {}).stream_latency;
    if (latency && latency.count) {
      state.latency.push([update.status.now, latency.p50_ms, latency.p99_ms]);
    }
  }
  state.slices.push(...update.slices);
  state.open = update.open;
  state.marks.push(...update.marks);
  const now = state.status ? state.status.now : 0;
  const since = now - WINDOW_S;
  state.slices = state.slices.filter((s) => s.end >= since).slice(-3000);
  state.marks = state.marks.filter((m) => m.t >= since).slice(-2000);
  state.latency = state.latency.filter((l) => l[0] >= since);
}

function renderHeader() {
  const s = state.scheduler;
  document.getElementById("scheduler").textContent =
    `scheduler ${text(s.scheduler_id)} at ${text(s.address)}`;
  const st = state.status;
  document.getElementById("policy").textContent = st ? `policy ${st.policy}` : "";
  document.body.dataset.updates = state.updates;
}

function renderCounters() {
  const st = state.status;
  if (!st) return;
  const sum = (stateName) => Object.values(st.tasks || {})
    .reduce((total, byState) => total + (byState[stateName] || 0), 0);
  const c = st.counters || {};
  const refused = Object.values(c.refused || {}).reduce((a, b) => a + b, 0);
  const items = [
    ["running", sum("running")], ["pending", sum("pending")], ["queued", sum("queued")],
    ["suspended", sum("suspended")], ["finished", sum("finished")], ["failed", sum("failed")],
    ["suspensions", c.suspensions || 0], ["resumptions", c.resumptions || 0],
    ["kills", c.kills || 0], ["steals", st.steals || 0],
    ["executors lost", c.executor_losses || 0], ["refused decisions", refused],
    ["bad frames", (st.bad_input || {}).bad_frames || 0],
    ["waiting on inputs", sum("waiting")], ["recomputed", c.recomputations || 0],
    ["local placements", (c.placements || {}).local || 0],
    ["remote placements", (c.placements || {}).remote || 0],
  ];
  // Stream sources' lag, as their drivers report it (runtime/streams.py).
  for (const lag of st.streams || []) {
    const age = lag.oldest_age_s == null ? "" : ` (${lag.oldest_age_s.toFixed(1)} s)`;
    items.push([`behind in ${lag.source}${age}`, lag.pending]);
  }
  const box = document.getElementById("counters");
  box.replaceChildren(...items.map(([label, value]) => {
    const div = document.createElement("div");
    div.dataset.counter = label;
    const b = document.createElement("b");
    b.textContent = value.toLocaleString();
    div.append(b, label);
    return div;
  }));
}

function renderExecutors() {
  const st = state.status;
  if (!st) return;
  const rows = st.executors.map((e) => {
    const status = e.state !== "alive" ? "lost" : e.busy ? "busy" : "alive";
    const running = e.running
      ? { text: `${e.running_function || ""} (${e.running_priority})`,
          cls: e.running_priority }
      : "idle";
    const memory = e.memory_limit_bytes
      ? `${bytes(e.rss_bytes)} / ${bytes(e.memory_limit_bytes)}` : bytes(e.rss_bytes);
    return row([e.executor_id, e.node, { text: status, cls: status }, running, e.queued,
                e.suspended.length, memory], { executor: e.executor_id, state: status });
  });
  fill("executors", rows, "no executors yet");
}

function renderJobs() {
  const st = state.status;
  if (!st) return;
  const rows = st.jobs.map((j) => {
    const done = j.finished + j.failed + j.cancelled;
    const bar = document.createElement("progress");
    bar.max = Math.max(1, j.total);
    bar.value = done;
    return row([j.job_id, j.function, { text: j.priority, cls: j.priority }, bar,
                `${done.toLocaleString()} / ${j.total.toLocaleString()}`, j.suspended, j.failed],
               { job: j.job_id, done: done, total: j.total });
  });
  fill("jobs", rows, "no jobs");
}

function renderRefused() {
  const st = state.status;
  if (!st) return;
  const refused = Object.entries((st.counters || {}).refused || {}).sort((a, b) => b[1] - a[1]);
  fill("refused", refused.map(([reason, count]) => row([reason, count])), "none");
}

function renderEvents() {
  const now = state.status ? state.status.now : 0;
  const listed = state.marks.filter((m) => LISTED.has(m.event)).slice(-15).reverse();
  fill("events", listed.map((m) => row([
    `${(now - m.t).toFixed(1)} s ago`, m.event.replace("_", " "),
    [m.executor, m.policy, m.reason].filter(Boolean).join(": "),
  ])), "nothing yet");
}

function renderTaskStream() {
  const st = state.status;
  if (!st || typeof Plotly === "undefined") return;
  const now = st.now;
  const executors = st.executors.filter((e) => e.state === "alive")
    .map((e) => plotlyText(e.executor_id));
  const pieces = [...state.slices, ...state.open.map((s) => ({ ...s, end: now, how: "running" }))];
  const traces = ["batch", "stream"].map((priority) => {
    const mine = pieces.filter((s) => (s.priority || "batch") === priority);
    return {
      type: "bar", orientation: "h", name: priority,
      y: mine.map((s) => plotlyText(s.executor)),
      base: mine.map((s) => s.start - now),
      x: mine.map((s) => Math.max(s.end - s.start, 0.004)),
      marker: { color: COLORS[priority] },
      hovertext: mine.map((s) => plotlyText(`${s.function || ""} ${s.task}: ${s.how}`)),
      hoverinfo: "text",
    };
  });
  for (const [event, symbol] of Object.entries(MARK_SYMBOLS)) {
    const marks = state.marks.filter((m) => m.event === event && m.executor);
    traces.push({
      type: "scatter", mode: "markers", name: event,
      y: marks.map((m) => plotlyText(m.executor)), x: marks.map((m) => m.t - now),
      marker: { symbol, size: 9, color: "#222" },
      hovertext: marks.map((m) => plotlyText(`${event} ${m.task || ""}`)), hoverinfo: "text",
    });
  }
  Plotly.react("task-stream", traces, {
    barmode: "overlay", margin: { l: 140, r: 10, t: 10, b: 35 },
    xaxis: { range: [-WINDOW_S, 0], title: "seconds ago" },
    yaxis: { type: "category", categoryarray: executors, automargin: true },
    legend: { orientation: "h" }, uirevision: "keep",
  }, { displaylogo: false, responsive: true });
  document.getElementById("stream-summary").textContent =
    `${pieces.length} slices, ${state.open.length} running`;
  document.getElementById("task-stream").dataset.slices = pieces.length;
}

function renderLatency() {
  const st = state.status;
  if (!st || typeof Plotly === "undefined") return;
  const latency = (st.counters || {}).stream_latency || {};
  document.getElementById("latency-now").textContent = latency.count
    ? `p50 ${latency.p50_ms} ms, p90 ${latency.p90_ms} ms, p99 ${latency.p99_ms} ms ` +
      `over ${latency.count} tasks in the last ${latency.window_s} s`
    : "no stream tasks in the last minute";
  const now = st.now;
  const series = [[1, "p50"], [2, "p99"]].map(([i, name]) => ({
    type: "scatter", mode: "lines", name,
    x: state.latency.map((l) => l[0] - now), y: state.latency.map((l) => l[i]),
  }));
  Plotly.react("latency", series, {
    margin: { l: 50, r: 10, t: 10, b: 35 },
    xaxis: { range: [-WINDOW_S, 0], title: "seconds ago" },
    yaxis: { title: "ms", rangemode: "tozero" }, legend: { orientation: "h" },
    uirevision: "keep",
  }, { displaylogo: false, responsive: true });
}

function render() {
  renderHeader();
  renderCounters();
  renderExecutors();
  renderJobs();
  renderRefused();
  renderEvents();
  renderTaskStream();
  renderLatency();
}

function connect() {
  const connection = document.getElementById("connection");
  const source = new EventSource("/events");
  source.onopen = () => { connection.textContent = "live"; connection.className = ""; };
  source.onerror = () => { connection.textContent = "reconnecting"; connection.className = "down"; };
  source.onmessage = (event) => {
    merge(JSON.parse(event.data));
    render();
  };
}

connect();
