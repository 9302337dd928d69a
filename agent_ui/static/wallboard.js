// The supervisor wallboard: a tile per queue, charts of the last hours, the agent table, actions.
// Figures come from the server (GET /api/v1/queues: the routing engine's counters; the charts
// from GET /api/v1/queue-history); the supervisor socket makes a change show at once, a poll
// keeps the board right if a message is lost.
import uPlot from "./vendor/uplot/uPlot.esm.js";
import { api, el, clear, duration } from "./common.js";

const POLL_MS = 3000;
const PRESENCES = ["available", "busy", "after_call_work", "away", "offline"];
const charts = new Map();
const HISTORY_HOURS = 8;

async function refresh() {
  try {
    const [queues, agents, history] = await Promise.all([
      api("/api/v1/queues"),
      api("/api/v1/agents"),
      api(`/api/v1/queue-history?hours=${HISTORY_HOURS}`),
    ]);
    for (const queue of queues.queues) queue.history = history.queues[queue.name] || [];
    renderTiles(queues.queues);
    renderAgents(agents.agents);
    fillMoveForm(queues.queues, agents.agents);
    document.getElementById("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    document.getElementById("updated").textContent = `Not updated: ${error.message}`;
  }
}

// --- queue tiles ----------------------------------------------------------------------------

function renderTiles(queues) {
  const tiles = document.getElementById("tiles");
  const seen = new Set();
  for (const queue of queues) {
    seen.add(queue.name);
    let tile = document.getElementById(tileId(queue.name));
    if (!tile) {
      tile = el("article", { class: "tile", id: tileId(queue.name), "aria-labelledby": `${tileId(queue.name)}-title` });
      tiles.append(tile);
    }
    fillTile(tile, queue);
  }
  for (const tile of [...tiles.children]) {
    if (!seen.has(tile.dataset.queue)) tile.remove();
  }
}

function fillTile(tile, queue) {
  const now = queue.now;
  const today = queue.today;
  const level = serviceLevel(queue);
  tile.dataset.queue = queue.name;
  tile.className = `tile level-${level.grade}`;
  const chartBox = charts.get(queue.name)?.root.parentElement || el("div", { class: "chart-box" });
  clear(tile);
  tile.append(
    el("h2", { id: `${tileId(queue.name)}-title` }, [queue.name]),
    el("p", {}, [el("span", { class: "big", "data-figure": "waiting" }, [String(now.waiting)]), " waiting"]),
    el("p", { class: "level" }, [level.text]),
    el("dl", {}, [
      ...pair("Longest wait", duration(now.longest_wait_seconds || 0), "longest-wait"),
      ...pair("Offered today", String(today.offered), "offered"),
      ...pair("Answered", String(today.answered), "answered"),
      ...pair("Abandoned", String(today.abandoned), "abandoned"),
      ...pair("ASA", today.asa_seconds == null ? "–" : duration(today.asa_seconds), "asa"),
      ...pair("AHT", today.aht_seconds == null ? "–" : duration(today.aht_seconds), "aht"),
      ...pair("Abandonment", percent(today.abandonment_rate), "abandonment"),
      ...pair("Agents", agentsLine(now.agents), "agents"),
    ]),
    chartBox,
  );
  drawChart(queue, chartBox);
}

function pair(label, value, name) {
  return [el("dt", {}, [label]), el("dd", { "data-figure": name }, [value])];
}

// Colour from the queue's own target, and the words too: colour is never the only signal.
function serviceLevel(queue) {
  const value = queue.today.service_level;
  const target = queue.sla_percent / 100;
  const goal = `${queue.sla_percent}% within ${duration(queue.sla_seconds)}`;
  if (value == null) return { grade: "ok", text: `Service level: nothing answered yet (target ${goal})` };
  const grade = value >= target ? "ok" : value >= target - 0.1 ? "warn" : "bad";
  const words = { ok: "on target", warn: "below target", bad: "far below target" }[grade];
  return { grade, text: `Service level ${percent(value)}, ${words} (target ${goal})` };
}

function agentsLine(agents) {
  return PRESENCES.filter((p) => agents[p]).map((p) => `${agents[p]} ${p.replaceAll("_", " ")}`).join(", ") || "none";
}

function drawChart(queue, box) {
  const history = queue.history || [];
  const data = [
    history.map((s) => Date.parse(s.at) / 1000),
    history.map((s) => s.waiting),
    history.map((s) => (s.service_level == null ? null : Math.round(s.service_level * 100))),
  ];
  const existing = charts.get(queue.name);
  if (existing) {
    existing.setData(data);
    return;
  }
  const chart = new uPlot(
    {
      width: 240,
      height: 120,
      title: "Last hours",
      legend: { show: true },
      // Always the whole window: left to itself uPlot spreads one or two samples over years.
      scales: { x: { time: true, range: () => historyWindow() }, pct: { range: [0, 100] } },
      hooks: { setScale: [(u, key) => key === "x" && describePeriod(box, u.scales.x)] },
      series: [{}, { label: "Waiting", stroke: "#0b5cad" }, { label: "SL %", stroke: "#1a7f37", scale: "pct", dash: [4, 4] }],
      axes: [{}, {}, { scale: "pct", side: 1, grid: { show: false } }],
    },
    data,
    box,
  );
  charts.set(queue.name, chart);
}

function historyWindow() {
  const end = Date.now() / 1000;
  return [end - HISTORY_HOURS * 3600, end];
}

// The canvas says nothing to a screen reader: the box names the period the chart shows.
function describePeriod(box, { min, max }) {
  const time = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", `Waiting and service level from ${time(min)} to ${time(max)}`);
}

// --- agents ---------------------------------------------------------------------------------

function renderAgents(agents) {
  const body = document.getElementById("agents");
  clear(body);
  for (const agent of agents) {
    const select = el("select", { "aria-label": `Presence of ${agent.name}` },
      PRESENCES.map((p) => el("option", { value: p }, [p.replaceAll("_", " ")])));
    select.value = agent.presence;
    select.addEventListener("change", () => setPresence(agent, select.value));
    const since = agent.presence_since ? duration((Date.now() - Date.parse(agent.presence_since)) / 1000) : "–";
    const load = Object.entries(agent.load || {}).map(([channel, n]) => `${channel} ${n}`).join(", ") || "0";
    body.append(el("tr", { "data-agent-id": String(agent.id) }, [
      el("th", { scope: "row" }, [agent.name]),
      el("td", { "data-figure": "presence" }, [agent.presence.replaceAll("_", " ")]),
      el("td", {}, [since]),
      el("td", {}, [load]),
      el("td", {}, [select]),
    ]));
  }
}

async function setPresence(agent, presence) {
  await api(`/api/v1/agents/${agent.id}`, { method: "PATCH", body: { presence } });
  await refresh();
}

// --- move / force-assign ----------------------------------------------------------------------

function fillMoveForm(queues, agents) {
  fillSelect(document.getElementById("move-queue"), "(keep)", queues.map((q) => [q.name, q.name]));
  fillSelect(document.getElementById("move-agent"), "(nobody)", agents.map((a) => [String(a.id), a.name]));
}

function fillSelect(select, empty, options) {
  const chosen = select.value;
  if (select.options.length === options.length + 1) return;
  clear(select);
  select.append(el("option", { value: "" }, [empty]), ...options.map(([value, label]) => el("option", { value }, [label])));
  select.value = chosen;
}

async function move(event) {
  event.preventDefault();
  const status = document.getElementById("move-status");
  const number = document.getElementById("move-ticket").value.trim().replace(/^#/, "");
  try {
    const found = await api(`/api/v1/search?q=${encodeURIComponent(number)}`);
    const ticket = found.tickets.find((t) => String(t.number) === number);
    if (!ticket) throw new Error(`no ticket #${number}`);
    const changes = {};
    const queue = document.getElementById("move-queue").value;
    const agent = document.getElementById("move-agent").value;
    if (queue) changes.queue = queue;
    if (agent) changes.assignee_id = Number(agent);
    await api(`/api/v1/tickets/${ticket.id}`, { method: "PATCH", body: changes });
    status.textContent = `Ticket #${number} updated.`;
    await refresh();
  } catch (error) {
    status.textContent = `Not changed: ${error.message}`;
  }
}

function listen() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/supervisor`);
  socket.addEventListener("message", () => scheduleRefresh());
  socket.addEventListener("close", () => setTimeout(listen, 5000));
}

let pending = null;
function scheduleRefresh() {
  if (pending) return;
  pending = setTimeout(() => { pending = null; refresh(); }, 200);
}

function tileId(name) {
  return `queue-${name.replace(/[^a-zA-Z0-9_-]/g, "_")}`;
}

function percent(ratio) {
  return ratio == null ? "–" : `${Math.round(ratio * 100)}%`;
}

document.getElementById("move-form").addEventListener("submit", move);
refresh();
listen();
setInterval(refresh, POLL_MS);
