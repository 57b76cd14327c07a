// Quokka's dashboard: polls status.json and series.json once a second and draws them. No
// libraries: the page must work with no internet. Text from the engine goes in as text
// (textContent), never as HTML.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
const COLORS = ["#3d7be0", "#e0703d", "#2e9d5b", "#a04fd1", "#d1a14f", "#4fc3d1", "#d14f7e", "#6b7588"];
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function ns(v) {
  if (v == null) return "-";
  if (v < 1e3) return v + "ns";
  if (v < 1e6) return (v / 1e3).toFixed(1) + "us";
  if (v < 1e9) return (v / 1e6).toFixed(2) + "ms";
  return (v / 1e9).toFixed(2) + "s";
}

function bytes(v) {
  if (v < 1e3) return v + " B";
  if (v < 1e6) return (v / 1e3).toFixed(1) + " kB";
  if (v < 1e9) return (v / 1e6).toFixed(1) + " MB";
  return (v / 1e9).toFixed(2) + " GB";
}

function rate(v) {
  if (v < 1e3) return v.toFixed(0);
  if (v < 1e6) return (v / 1e3).toFixed(1) + "k";
  return (v / 1e6).toFixed(2) + "M";
}

const coreKey = (c) => c.node + "/" + c.core;

// The smallest 1, 2 or 5 times a power of ten at least `v` (a readable axis step).
function niceStep(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= v);
}

// A line chart of `lines` ({label, color, dash, points: [[t, v]]}) over the last five minutes.
function chart(canvas, lines, { log, format }) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 70, R = 10, T = 10, B = 24;
  ctx.clearRect(0, 0, W, H);
  const now = Date.now(), t0 = now - 300e3;
  // Loops, not Math.min(...values): a spread of a few hundred thousand points overflows the stack.
  let lo = log ? 1e5 : 0, hi = log ? 1e6 : 4;
  for (const l of lines) for (const [, v] of l.points) {
    if (v > 0) { if (log && v < lo) lo = v; if (v > hi) hi = v; }
  }
  if (log) { lo = Math.pow(10, Math.floor(Math.log10(lo))); hi = Math.pow(10, Math.ceil(Math.log10(hi))); }
  else hi = niceStep(hi / 4) * 4;
  const y = (v) => {
    const f = log ? (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : v / hi;
    return T + (H - T - B) * (1 - f);
  };
  const x = (t) => L + (W - L - R) * ((t - t0) / 300e3);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#6b7588";
  ctx.strokeStyle = "#eef0f4";
  ctx.lineWidth = 1;
  const ticks = log
    ? Array.from({ length: Math.round(Math.log10(hi / lo)) + 1 }, (_, i) => lo * Math.pow(10, i))
    : [0, 1, 2, 3, 4].map((i) => (hi / 4) * i);
  for (const v of ticks) {
    ctx.beginPath(); ctx.moveTo(L, y(v)); ctx.lineTo(W - R, y(v)); ctx.stroke();
    ctx.fillText(format(v), 4, y(v) + 4);
  }
  for (let m = 0; m <= 5; m++) {
    const t = t0 + m * 60e3;
    ctx.fillText(m === 5 ? "now" : "-" + (5 - m) + " min", x(t) - 14, H - 6);
  }
  for (const l of lines) {
    ctx.strokeStyle = l.color;
    ctx.lineWidth = 2;
    ctx.setLineDash(l.dash || []);
    ctx.beginPath();
    let started = false;
    for (const [t, v] of l.points) {
      if (t < t0 || v == null) { started = false; continue; }
      if (started) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
      started = true;
    }
    ctx.stroke();
  }
  ctx.setLineDash([]);
}

function legend(div, keys, colors) {
  div.replaceChildren(...keys.map((k) => el("span", {}, el("i", { style: "background:" + colors[k] }), "core " + k)));
}

function drawSeries(series) {
  const keys = [...new Set(series.samples.flatMap((s) => s.cores.map(coreKey)))].sort();
  const colors = Object.fromEntries(keys.map((k, i) => [k, COLORS[i % COLORS.length]]));
  const points = (k, field) => series.samples.map((s) => {
    const c = s.cores.find((c) => coreKey(c) === k);
    return [s.t, c ? c[field] : null];
  });
  chart($("throughput"), keys.map((k) => ({ color: colors[k], points: points(k, "outputs_per_sec") })), { log: false, format: rate });
  const lat = keys.flatMap((k) => [
    { color: colors[k], points: points(k, "p99_ns") },
    { color: colors[k], dash: [6, 4], points: points(k, "p50_ns") },
    { color: colors[k], dash: [2, 3], points: points(k, "p999_ns") },
  ]);
  chart($("latency"), lat, { log: true, format: ns });
  legend($("throughput-legend"), keys, colors);
  legend($("latency-legend"), keys, colors);
}

function drawStatus(s) {
  const me = s.nodes[0] || { name: "?" };
  $("node").textContent = "node " + me.name + (me.coordinator ? " (coordinator)" : " (member)");
  const total = s.cores.reduce((a, c) => a + c.outputs_per_sec, 0);
  $("total-rate").textContent = rate(total);
  $("total-rate").dataset.value = total.toFixed(0);
  $("summary").textContent = `routing epoch ${s.epoch}, ${s.slots} slots, ${s.cores.length} cores` +
    (s.retired_cores ? ` (${s.retired_cores} retired)` : "") + (s.silent_cores.length ? `, silent: ${s.silent_cores.join(", ")}` : "");
  const lead = s.nodes.find((n) => n.coordinator);
  const link = $("coordinator-link");
  link.replaceChildren();
  if (!me.coordinator && lead && lead.http) {
    link.append("whole cluster: ", el("a", { href: withToken("http://" + lead.http + "/") }, "coordinator " + lead.name + "'s dashboard"));
  }

  const m = s.migration;
  const mig = $("migration");
  mig.replaceChildren();
  if (m) {
    const pct = m.slots ? (100 * m.slots_moved) / m.slots : 0;
    mig.append(el("div", {}, `${m.change}: step ${m.steps_done}/${m.steps}, ${m.slots_moved}/${m.slots} slots, ${(m.running_ms / 1e3).toFixed(1)} s`),
      el("div", { class: "progress" }, el("div", { style: `width:${pct}%` })));
  } else mig.textContent = "none running";
  const ch = s.changes;
  $("changes").textContent = ch.done || ch.failed
    ? `${ch.done} done (${ch.slots_moved} slots, ${bytes(ch.bytes_moved)} moved in ${(ch.moving_ms / 1e3).toFixed(2)} s), ${ch.failed} ended early`
    : "";

  $("nodes").replaceChildren(
    ...s.nodes.map((n) => el("li", {}, n.http ? el("a", { href: withToken("http://" + n.http + "/") }, n.name) : n.name,
      n.coordinator ? " (coordinator)" : "", ", data " + n.data)),
    ...s.lost.map((l) => el("li", { class: "lost" }, `LOST ${l.node} (${l.slots} slots): ${l.reason}`)),
  );
  const r = s.recovery;
  $("recovery").textContent = !r ? "" : r.failed ? `recovery of ${r.node} FAILED: ${r.failed}`
    : r.running ? `recovering ${r.node}: ${r.slots} slots from checkpoint ${r.checkpoint}`
    : `recovered ${r.node} (${r.slots} slots) in ${r.took_ms} ms`;
  $("recovery").className = r && r.failed ? "failed" : "";

  const c = s.checkpoints;
  const cp = $("checkpoints");
  if (c) {
    const l = c.last_complete;
    cp.replaceChildren(
      el("div", {}, l ? `last durable: ${l.checkpoint}, ${(l.age_ms / 1e3).toFixed(1)} s ago, took ${l.duration_ms} ms, wrote ${bytes(l.written_bytes)} of ${bytes(l.state_bytes)}` : "none yet"),
      el("div", {}, `${c.completed} completed, ${c.failed} failed since start`),
      c.failure ? el("div", { class: "failed" }, "failing: " + c.failure) : "",
      c.awaiting_nodes.length ? el("div", { class: "failed" }, "waiting for nodes " + c.awaiting_nodes.join(", ")) : "",
    );
  }

  const rows = s.cores.map((k) => el("tr", { "data-core": k.core, "data-node": k.node },
    el("td", {}, k.node), el("td", {}, k.core), el("td", {}, k.cpu), el("td", {}, (100 * k.busy).toFixed(0) + "%"), el("td", {}, k.slots),
    el("td", {}, el("div", { class: "bar" }, el("div", { style: `width:${(100 * k.slots) / s.slots}%` }))),
    el("td", {}, k.entities), el("td", {}, bytes(k.state_bytes)), el("td", {}, rate(k.outputs_per_sec)),
    el("td", {}, ns(k.latency_p99_ns)), el("td", {}, k.inbox), el("td", {}, k.outbox), el("td", {}, k.connections),
    el("td", { class: k.sink_down ? "down" : "" }, k.sink_down ? `DOWN (${k.sink_failures} failed)` : "up")));
  $("cores").tBodies[0].replaceChildren(...rows);
}

async function fetchJson(url) {
  const r = await fetch(withToken(url), { cache: "no-store" });
  if (!r.ok) throw new Error(`${url}: ${r.status} ${(await r.text()).trim()}`);
  return r.json();
}

async function refresh() {
  try {
    const [status, series] = await Promise.all([fetchJson("status.json"), fetchJson("series.json")]);
    drawStatus(status);
    drawSeries(series);
    $("error").textContent = "";
    $("error").classList.remove("shown");
  } catch (e) {
    $("error").textContent = "cannot read the engine: " + e.message;
    $("error").classList.add("shown");
  }
}

for (const a of document.querySelectorAll("a.own")) a.href = withToken(a.getAttribute("href"));
refresh();
setInterval(refresh, 1000);
