// karnna's page: sampling controls over POST /api/sample (the text read as it streams), the
// run's checkpoints (GET /api/checkpoints) and its loss curves (GET /api/metrics, polled, so a
// run still training draws live). Plain JavaScript, no library; data is only ever written as
// text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let running = null; // the AbortController of the sample being drawn
let rows = [];      // metrics.csv rows
let checkpoints = [];

function svg(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function label(ckpt) {
  const val = ckpt.val_loss == null ? "no val loss" : "val " + ckpt.val_loss.toFixed(3);
  return `iteration ${ckpt.iteration} · ${val}${ckpt.best ? " · best" : ""}`;
}

async function loadCheckpoints() {
  const r = await fetch("/api/checkpoints");
  if (!r.ok) return;
  const list = await r.json();
  const same = list.length === checkpoints.length &&
    list.every((c, i) => c.name === checkpoints[i].name && c.best === checkpoints[i].best);
  checkpoints = list;
  if (same) return;
  const select = $("checkpoint");
  const chosen = select.value;
  select.textContent = "";
  for (const c of list) {
    const o = document.createElement("option");
    o.value = c.name;
    o.textContent = label(c);
    o.title = c.name;
    select.appendChild(o);
  }
  if (list.some((c) => c.name === chosen)) select.value = chosen;
  $("run").textContent = `${list.length} checkpoint${list.length === 1 ? "" : "s"}`;
  draw();
}

async function loadMetrics() {
  const r = await fetch("/api/metrics");
  if (!r.ok) return;
  const next = await r.json();
  const last = (a) => (a.length ? JSON.stringify(a[a.length - 1]) : "");
  if (next.length === rows.length && last(next) === last(rows)) return;
  rows = next;
  draw();
}

function selected() {
  return checkpoints.find((c) => c.name === $("checkpoint").value);
}

// The train loss (thin) and validation loss (thick, dotted) against iterations, with the
// chosen checkpoint marked.
function draw() {
  const root = $("curve");
  root.textContent = "";
  // Drawn at the element's own size, so that the text stays legible from a phone to a desktop.
  const W = Math.max(280, Math.round(root.getBoundingClientRect().width) || 480);
  const H = W < 520 ? 220 : 260, L = 44, R = 14, T = 26, B = 36;
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.setAttribute("height", H);
  const ckpt = selected();
  const note = $("curve-note");
  if (!rows.length) {
    svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, root).textContent =
      "no metrics.csv yet";
    note.textContent = "";
    return;
  }
  const its = rows.map((r) => r.iteration);
  const maxIt = Math.max(1, ...its, ckpt ? ckpt.iteration : 0);
  const losses = rows.flatMap((r) => [r.train_loss, r.val_loss]).filter((v) => Number.isFinite(v));
  let lo = Math.min(...losses), hi = Math.max(...losses);
  const pad = Math.max((hi - lo) * 0.05, 0.01);
  lo = Math.max(0, lo - pad); hi += pad;
  const x = (it) => L + (W - L - R) * it / maxIt;
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }, root);
    svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, root).textContent = v.toFixed(2);
    const it = Math.round(maxIt * i / 4);
    svg("text", { x: x(it), y: H - B + 18, "text-anchor": "middle" }, root).textContent = it;
  }
  svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, root).textContent = "iteration";
  const path = (pts) => pts.map(([a, b], i) => `${i ? "L" : "M"}${x(a).toFixed(1)},${y(b).toFixed(1)}`).join("");
  const train = rows.filter((r) => Number.isFinite(r.train_loss)).map((r) => [r.iteration, r.train_loss]);
  const val = rows.filter((r) => Number.isFinite(r.val_loss)).map((r) => [r.iteration, r.val_loss]);
  if (train.length) svg("path", { d: path(train), class: "train" }, root);
  if (val.length) svg("path", { d: path(val), class: "val" }, root);
  for (const [a, b] of val) svg("circle", { cx: x(a), cy: y(b), r: 3, class: "dot" }, root);
  if (ckpt) {
    svg("line", { x1: x(ckpt.iteration), x2: x(ckpt.iteration), y1: T, y2: H - B, class: "mark", "data-iteration": ckpt.iteration }, root);
  }
  svg("rect", { x: W - R - 190, y: 6, width: 12, height: 12, class: "legend-train" }, root);
  svg("text", { x: W - R - 173, y: 17 }, root).textContent = "training";
  svg("rect", { x: W - R - 95, y: 6, width: 12, height: 12, class: "legend-val" }, root);
  svg("text", { x: W - R - 78, y: 17 }, root).textContent = "validation";
  const lastVal = val.length ? val[val.length - 1][1].toFixed(3) : "–";
  note.textContent = `${rows[rows.length - 1].iteration} iterations, last validation ${lastVal}` +
    (ckpt ? ` · marked: iteration ${ckpt.iteration}` : "");
}

function request() {
  const body = {
    len: Number($("len").value),
    temperature: Number($("temperature").value),
    top_n: Number($("top_n").value),
    argmax: $("argmax").checked,
  };
  if ($("prime").value !== "") body.prime = $("prime").value;
  if ($("checkpoint").value) body.checkpoint = $("checkpoint").value;
  let json = JSON.stringify(body);
  const seed = $("seed").value.trim();
  if (seed !== "") {
    if (!/^[0-9]{1,20}$/.test(seed)) throw new Error("the seed must be a whole number");
    json = json.slice(0, -1) + `,"seed":${seed}}`; // as digits: a u64 may not fit a JS number
  }
  return json;
}

async function generate() {
  if (running) running.abort();
  const out = $("out"), status = $("status");
  out.textContent = "";
  const text = document.createTextNode("");
  out.appendChild(text);
  const ctl = new AbortController();
  running = ctl;
  $("generate").disabled = true;
  $("stop").disabled = false;
  const t0 = performance.now();
  let chars = 0;
  try {
    const r = await fetch("/api/sample", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: request(),
      signal: ctl.signal,
    });
    if (!r.ok) {
      const e = await r.json().catch(() => ({ error: r.statusText }));
      throw new Error(e.error || r.statusText);
    }
    const seed = r.headers.get("x-seed"), name = r.headers.get("x-checkpoint") || "";
    status.textContent = `sampling ${name} (seed ${seed})…`;
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const s = decoder.decode(value, { stream: true });
      chars += s.length;
      text.appendData(s);
    }
    const secs = (performance.now() - t0) / 1000;
    status.textContent = `${chars} characters in ${secs.toFixed(2)} s from ${name}, seed ${seed}`;
  } catch (e) {
    if (e.name === "AbortError") {
      status.textContent = `stopped after ${chars} characters`;
    } else {
      const err = document.createElement("span");
      err.className = "error";
      err.textContent = String(e.message || e);
      out.appendChild(err);
      status.textContent = "";
    }
  } finally {
    if (running === ctl) running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

function poll(f, ms) {
  const tick = async () => {
    if (!document.hidden) await f().catch(() => {});
    setTimeout(tick, ms);
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => running && running.abort());
  $("checkpoint").addEventListener("change", draw);
  window.addEventListener("resize", draw);
  $("prime").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
  });
  poll(loadCheckpoints, 5000);
  poll(loadMetrics, 2000);
});
