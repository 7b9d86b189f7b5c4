// llmq's live queue page: polls GET /v1/queue with the operator's key (a
// bearer header; the key stays in sessionStorage) and draws it. Every value
// from the server is written with textContent, never as HTML.
"use strict";

const KEY = "llmq-ui-key";
const INTERVAL_MS = 500;
const $ = (id) => document.getElementById(id);

let timer = null;
let generation = 0; // a new key or a logout invalidates polls in flight

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function fmtWait(ms) {
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 10) return s.toFixed(1) + " s";
  const r = Math.round(s); // whole seconds, so no "1 min 60 s"
  if (r < 3600) return r >= 60 ? Math.floor(r / 60) + " min " + (r % 60) + " s" : r + " s";
  const m = Math.round(s / 60); // whole minutes, so no "23 h 60 min"
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

// heat is the colour class of an oldest wait: 0 <100ms, 1 <1s, 2 <3s, 3 <10s, 4 <30s, 5 <60s, 6 beyond.
function heat(ms) {
  const steps = [100, 1000, 3000, 10000, 30000, 60000];
  let i = 0;
  while (i < steps.length && ms >= steps[i]) i++;
  return "h" + i;
}

function bar(used, limit) {
  if (!limit) return el("span", { class: "muted" }, used + " / no limit");
  const ratio = Math.min(used / limit, 1);
  const cls = ratio >= 0.9 ? "bar full" : ratio >= 0.7 ? "bar warn" : "bar";
  const fill = el("span", { class: "fill" });
  fill.style.width = (ratio * 100).toFixed(1) + "%";
  return el("span", { class: cls }, el("span", { class: "track" }, fill), el("span", { class: "num" }, used + " / " + limit));
}

function show(which) {
  $("login").hidden = which !== "login";
  $("queue").hidden = which !== "queue";
  $("live").hidden = which !== "queue";
  $("forget").hidden = which !== "queue" || !sessionStorage.getItem(KEY);
}

// clear removes everything drawn from the queue, so nothing of it stays on
// the page once the key is refused or forgotten.
function clear() {
  for (const id of ["heat", "tenants", "waits", "deployments", "batches", "dead"]) $(id).querySelector("tbody").replaceChildren();
  $("heat").querySelector("thead").replaceChildren();
  for (const id of ["total", "dead-count", "stream", "starving", "paused", "updated"]) $(id).textContent = "";
}

function renderHeat(st) {
  const groups = new Set();
  for (const d of st.deployments || []) groups.add(d.group);
  for (const q of st.queues) groups.add(q.group);
  const cols = [...groups].sort();
  let maxBand = 0;
  for (const q of st.queues) maxBand = Math.max(maxBand, q.band);
  const cell = new Map(st.queues.map((q) => [q.band + "\u0000" + q.group, q]));
  const paused = (b, g) => (st.paused || []).some((p) => p.group === g && (p.band === -1 || p.band === b));
  let worst = null;
  for (const q of st.queues) if (!worst || q.oldest_wait_ms > worst.oldest_wait_ms) worst = q;

  $("heat").querySelector("thead").replaceChildren(el("tr", {}, el("th", {}, "band"), ...cols.map((g) => el("th", {}, g))));
  const rows = [];
  for (let b = 0; b <= maxBand; b++) {
    const tds = cols.map((g) => {
      const q = cell.get(b + "\u0000" + g);
      const p = paused(b, g);
      const mark = p ? { "data-paused": "" } : {};
      if (!q) return el("td", { class: "empty" + (p ? " paused" : ""), "data-band": b, "data-group": g, "data-count": 0, ...mark }, p ? "paused" : "·");
      const cls = heat(q.oldest_wait_ms) + (q === worst && st.queues.length > 1 ? " starving" : "") + (p ? " paused" : "");
      return el("td", { class: cls, "data-band": b, "data-group": g, "data-count": q.depth, ...mark,
        title: `band ${b}, ${g}: ${q.depth} requests, oldest waits ${fmtWait(q.oldest_wait_ms)}${p ? " (paused)" : ""}` },
        el("span", { class: "n" }, q.depth), el("span", { class: "w" }, fmtWait(q.oldest_wait_ms) + (p ? " · paused" : "")));
    });
    rows.push(el("tr", {}, el("th", { scope: "row" }, b === 0 ? "0 (first)" : b), ...tds));
  }
  $("heat").querySelector("tbody").replaceChildren(...rows);
  const names = (st.paused || []).map((p) => p.band === -1 ? `${p.group} (every band)` : `${p.group} band ${p.band}`);
  $("paused").hidden = names.length === 0;
  $("paused").textContent = names.length ? "paused: " + names.join(", ") : "";
  const s = $("starving");
  if (worst && st.queues.length > 1) {
    s.hidden = false;
    s.textContent = `longest wait: band ${worst.band}, ${worst.group} (${fmtWait(worst.oldest_wait_ms)})`;
  } else {
    s.hidden = true;
  }
}

// renderWaits draws each band's queue-wait p50 and p99 of the last minute,
// coloured like the heat map.
function renderWaits(st) {
  const rows = (st.queue_wait || []).map((w) => el("tr", { "data-band": w.band, "data-count": w.count },
    el("th", { scope: "row" }, w.band), el("td", {}, w.count),
    el("td", { class: heat(w.p50_ms) }, fmtWait(w.p50_ms)), el("td", { class: heat(w.p99_ms) }, fmtWait(w.p99_ms))));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { class: "muted", colSpan: 4 }, "no request answered in the last minute")));
  $("waits").querySelector("tbody").replaceChildren(...rows);
}

function renderDeployments(st) {
  const rows = (st.deployments || []).map((d) => {
    const saturated = (d.max_parallel_requests && d.in_flight >= d.max_parallel_requests) ||
      (d.rpm && d.rpm_used >= d.rpm) || (d.tpm && d.tpm_used >= d.tpm);
    const cool = d.cooldown_remaining_ms > 0
      ? el("span", { class: "badge cool", "data-cooldown-ms": d.cooldown_remaining_ms }, "cooling down, " + fmtWait(d.cooldown_remaining_ms) + " left" + (d.cooldown_reason ? ": " + d.cooldown_reason : ""))
      : el("span", { class: "muted" }, "–");
    const name = el("td", {}, d.id);
    if (saturated) name.append(el("span", { class: "badge sat" }, "saturated"));
    return el("tr", { class: saturated || d.cooldown_remaining_ms > 0 ? "saturated" : "", "data-deployment": d.id, "data-in-flight": d.in_flight },
      name, el("td", {}, d.group), el("td", {}, bar(d.in_flight, d.max_parallel_requests)),
      el("td", {}, bar(d.rpm_used, d.rpm)), el("td", {}, bar(d.tpm_used, d.tpm)), el("td", {}, cool));
  });
  $("deployments").querySelector("tbody").replaceChildren(...rows);
}

// renderTenants lists who waits in each band and group.
function renderTenants(st) {
  const rows = [];
  for (const q of st.queues) {
    for (const t of q.tenants || []) {
      rows.push(el("tr", { "data-key": `${q.band}/${q.group}/${t.tenant}`, "data-count": t.depth },
        el("td", {}, q.band), el("td", {}, q.group), el("td", {}, t.tenant), el("td", {}, t.depth),
        el("td", { class: heat(t.oldest_wait_ms) }, fmtWait(t.oldest_wait_ms))));
    }
  }
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { class: "muted", colSpan: 5 }, "nothing waiting")));
  $("tenants").querySelector("tbody").replaceChildren(...rows);
}

// renderBatches draws the batches not over with their progress.
function renderBatches(st) {
  const now = Date.now() / 1000;
  const rows = (st.batches || []).map((b) => el("tr", { "data-batch": b.id, "data-done": b.completed + b.failed, "data-total": b.total },
    el("td", {}, b.id), el("td", {}, b.status), el("td", {}, b.band),
    el("td", {}, bar(b.completed + b.failed, b.total), b.failed ? el("span", { class: "muted" }, " (" + b.failed + " failed)") : ""),
    el("td", {}, fmtWait(Math.max(0, Math.round((b.expires_at - now) * 1000))))));
  if (rows.length === 0) rows.push(el("tr", {}, el("td", { class: "muted", colSpan: 5 }, "no batch running")));
  $("batches").querySelector("tbody").replaceChildren(...rows);
}

function renderDead(st) {
  const dl = st.dead_letters;
  $("dead-count").textContent = dl ? dl.count : "unknown";
  const rows = (dl ? dl.latest : []).map((l) => el("tr", { "data-seq": l.seq },
    el("td", {}, l.seq), el("td", {}, fmtWait(l.age_ms)), el("td", {}, l.band), el("td", {}, l.group), el("td", { class: "reason" }, l.reason)));
  $("dead").querySelector("tbody").replaceChildren(...rows);
}

function render(st) {
  $("total").textContent = st.total;
  $("stream").textContent = st.stream;
  renderHeat(st);
  renderTenants(st);
  renderWaits(st);
  renderDeployments(st);
  renderBatches(st);
  renderDead(st);
  $("updated").textContent = new Date().toLocaleTimeString();
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

async function poll(gen) {
  const key = sessionStorage.getItem(KEY);
  const headers = key ? { Authorization: "Bearer " + key } : {};
  try {
    const r = await fetch("/v1/queue", { headers, cache: "no-store", credentials: "omit" });
    if (gen !== generation) return;
    if (r.status === 401 || r.status === 403) {
      sessionStorage.removeItem(KEY);
      stop();
      clear();
      $("login-error").textContent = key ? (r.status === 403 ? "This key may not see the queue: only the master key and keys with read_queue may." : "The key was refused.") : "";
      show("login");
      $("key").focus();
      return;
    }
    if (!r.ok) throw new Error("GET /v1/queue answered " + r.status);
    render(await r.json());
    $("error").hidden = true;
    show("queue");
  } catch (e) {
    if (gen !== generation) return;
    $("error").textContent = "Cannot read the queue: " + e.message + " (retrying)";
    $("error").hidden = false;
  }
  if (gen === generation) timer = setTimeout(() => poll(gen), INTERVAL_MS);
}

function stop() {
  generation++;
  clearTimeout(timer);
}

function start() {
  stop();
  poll(generation);
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(KEY, $("key").value);
  $("key").value = "";
  $("login-error").textContent = "";
  start();
});

$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  stop();
  clear();
  show("login");
});

start();
