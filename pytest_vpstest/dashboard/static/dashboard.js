// The dashboard page. Every value from the server is inserted as text (textContent / attributes),
// never parsed as HTML, so a node or test name cannot inject markup or script.
"use strict";

const views = new Map();          // project -> last project view
const openDetails = new Set();    // "project:section" kept open across re-renders
let dialogNode = null;            // {project, node} shown in the node dialog
let nodeLog = null;               // EventSource of the node's test output
const logStreams = new Map();     // project -> EventSource of runner.log

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function when(epoch) {
  return epoch ? new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "–";
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

// ---------------------------------------------------------------------------------- tooltip
const tooltip = () => document.getElementById("tooltip");
function withTooltip(node, text) {
  node.setAttribute("aria-label", text);
  node.dataset.tip = text;
  node.addEventListener("mouseenter", (ev) => {
    const t = tooltip();
    t.textContent = node.dataset.tip;
    t.hidden = false;
    const r = node.getBoundingClientRect();
    t.style.left = Math.round(r.left) + "px";
    t.style.top = Math.round(r.bottom + 6) + "px";
  });
  node.addEventListener("mouseleave", () => { tooltip().hidden = true; });
  return node;
}

// ---------------------------------------------------------------------------------- project card
function reachable(n) {
  const cls = n.reachable === "online" ? "ok" : n.reachable === "offline" ? "bad" :
              n.reachable === "degraded" ? "warn" : "unknown";
  return withTooltip(el("span", { class: "comp reach " + cls }, n.reachable || "unknown"),
                     "SSH: " + (n.reachable || "unknown") + (n.last_check ? " at " + n.last_check : "") +
                     (n.error ? " — " + n.error : ""));
}

function deployed(n) {
  const cls = n.deployed === true ? "ok" : n.deployed === false ? "bad" : "unknown";
  const label = n.deployed === true ? (n.build || "deployed") : n.deployed === false ? "failed" : "–";
  return withTooltip(el("span", { class: "comp deploy " + cls }, label),
                     (n.build ? "build " + n.build : "no build recorded") + (n.commit ? ", commit " + n.commit : "") +
                     (n.deployed_at ? ", " + when(n.deployed_at) : ""));
}

function health(n) {
  const h = n.health || "–";
  const cls = h === "Live" ? "ok" : (h === "Failed" || h === "Evicted") ? "bad" :
              (h === "Suspect" || h === "Respawning" || h === "Provisioning") ? "warn" : "unknown";
  return withTooltip(el("span", { class: "comp health " + cls }, h), "Liveness: " + h);
}

function testsComp(n) {
  const label = { green: "passed", red: "failed", yellow: "not run", blue: "running", gray: "disabled" }[n.tests];
  return withTooltip(el("span", { class: "comp tests tests-" + n.tests, "data-colour": n.tests }, label),
                     n.tooltip);
}

function fleetTable(v) {
  const rows = v.nodes.map((n) => el("tr", {
      class: "node", "data-node": n.name,
      onclick: () => openNode(v.project, n.name) },
    el("td", { class: "name" }, n.name, " ", el("span", { class: "nat" }, [n.role, n.nat].filter(Boolean).join(" · "))),
    el("td", {}, reachable(n)), el("td", {}, deployed(n)), el("td", {}, health(n)), el("td", {}, testsComp(n))));
  return el("table", { class: "fleet" },
    el("thead", {}, el("tr", {}, ["Node", "Reachable", "Deployed", "Health", "Tests"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function verdict(v) {
  if (!v.verdict) return el("p", { class: "empty" }, "No verdict yet.");
  const d = v.verdict;
  return el("div", { class: "verdict" },
    el("p", {}, "Latest verdict: ", el("strong", { class: d.passed ? "pass" : "fail" }, d.passed ? "PASS" : "FAIL"),
      d.criteria ? " (" + d.criteria + ")" : ""),
    d.checks.length ? el("table", { class: "checks" },
      el("tr", {}, ["check", "target", "measured", "gap", ""].map((h) => el("th", {}, h))),
      d.checks.map((c) => el("tr", {},
        el("td", {}, c.metric), el("td", {}, c.op + " " + c.target), el("td", {}, c.measured ?? "–"),
        el("td", {}, c.gap ?? "–"), el("td", { class: c.passed ? "pass" : "fail" }, c.passed ? "✓" : "✗")))) : null);
}

function links(v) {
  const p = encodeURIComponent(v.project);
  const items = [];
  for (const name of v.proofs) items.push(el("a", { href: `/projects/${p}/proof/${encodeURIComponent(name)}` }, name));
  for (const run of v.runs) for (const f of run.files)
    items.push(el("a", { href: `/projects/${p}/files/${f.split("/").map(encodeURIComponent).join("/")}` }, f));
  for (const f of v.logs)
    items.push(el("a", { href: `/projects/${p}/files/${f.split("/").map(encodeURIComponent).join("/")}` }, f));
  return el("div", { class: "links" }, items.length ? items : el("span", { class: "empty" }, "No proofs or results yet."));
}

function timeline(v) {
  return el("ol", { class: "timeline", reversed: true },
    v.transitions.slice().reverse().map((t) => el("li", {},
      (t.time || "") + "  " + t.from + " → " + t.to + (t.reason ? " — " + t.reason : ""))));
}

function matrix(v) {
  if (!v.matrix.length) return el("p", { class: "empty" }, "No connectivity results yet.");
  const nat = new Map(v.nodes.map((n) => [n.name, n.nat]));
  const byMethod = new Map();
  for (const c of v.matrix) {
    if (!byMethod.has(c.method)) byMethod.set(c.method, []);
    byMethod.get(c.method).push(c);
  }
  const tables = [];
  for (const [method, cells] of byMethod) {
    const dialers = [...new Set(cells.map((c) => c.from))].sort();
    const listeners = [...new Set(cells.map((c) => c.to))].sort();
    const at = new Map(cells.map((c) => [c.from + "\u0000" + c.to, c]));
    const label = (n) => [n, el("br"), el("span", { class: "nat" }, nat.get(n) || "?")];
    tables.push(el("h4", {}, method), el("table", { class: "matrix", "data-method": method },
      el("tr", {}, el("th", {}, "dialer ↓ listener →"), listeners.map((l) => el("th", {}, label(l)))),
      dialers.map((d) => el("tr", {}, el("th", {}, label(d)), listeners.map((l) => {
        const c = at.get(d + "\u0000" + l);
        if (!c) return el("td", { class: "cell" }, "");
        const bucket = c.rate >= 99 ? "r100" : c.rate > 0 ? "r50" : "r0";
        const td = el("td", { class: "cell " + bucket + (c.mismatch ? " mismatch" : ""), "data-from": d, "data-to": l },
          `${c.rate}% [${c.ci[0]}–${c.ci[1]}] n=${c.attempts}`);
        return withTooltip(td, `${d} → ${l} by ${method}: ${c.success}/${c.attempts}, 95% CI ${c.ci[0]}–${c.ci[1]}%` +
          (c.expected === null ? "" : `; NAT theory expects ${c.expected ? "success" : "failure"}`));
      })))));
  }
  return el("div", {}, tables);
}

function chart(title, series, project) {
  const W = 420, H = 180, L = 40, B = 20;
  const names = Object.keys(series);
  const pts = names.flatMap((n) => series[n]);
  const root = el("div", { class: "chart" }, el("h4", {}, title));
  if (!pts.length) { root.append(el("p", { class: "empty" }, "no data")); return root; }
  const vals = pts.map((p) => p[2]);
  const lo = Math.min(0, ...vals), hi = Math.max(...vals, 1);
  const runs = [...new Set(pts.map((p) => p[0]))];
  const order = new Map(runs.map((r, i) => [r, i]));
  const sortedRuns = [...new Set(pts.slice().sort((a, b) => a[1] < b[1] ? -1 : 1).map((p) => p[0]))];
  sortedRuns.forEach((r, i) => order.set(r, i));
  const x = (r) => L + (W - L - 10) * (sortedRuns.length > 1 ? order.get(r) / (sortedRuns.length - 1) : 0.5);
  const y = (v) => H - B - (H - B - 10) * ((v - lo) / ((hi - lo) || 1));
  const colours = ["#1565c0", "#c62828", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#5d4037"];
  const s = svg("svg", { class: "chart-svg", width: W, height: H, viewBox: `0 0 ${W} ${H}` },
    svg("line", { x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#999" }),
    svg("text", { x: 2, y: 14, "font-size": 10 }, String(hi)),
    svg("text", { x: 2, y: H - B, "font-size": 10 }, String(lo)));
  let legendX = L + 4;
  names.forEach((n, i) => {
    const c = colours[i % colours.length];
    const line = series[n].map((p) => `${x(p[0]).toFixed(1)},${y(p[2]).toFixed(1)}`).join(" ");
    s.append(svg("polyline", { points: line, fill: "none", stroke: c, "stroke-width": 1.5 }));
    for (const p of series[n]) {
      const a = svg("a", { href: `/projects/${encodeURIComponent(project)}/runs/${encodeURIComponent(p[0])}`, class: "point" },
        svg("circle", { cx: x(p[0]).toFixed(1), cy: y(p[2]).toFixed(1), r: 3, fill: c }),
        svg("title", {}, `${n}: ${p[2]} (run ${p[0]}, ${p[1]})`));
      s.append(a);
    }
    s.append(svg("text", { x: legendX, y: H - 4, "font-size": 10, fill: c }, n));
    legendX += 6 * n.length + 12;
  });
  root.append(s);
  return root;
}

async function loadHistory(project, box) {
  const h = await getJSON(`/api/projects/${encodeURIComponent(project)}/history`);
  box.replaceChildren(el("div", { class: "charts" },
    chart("Connection rates (%)", h.rates, project), chart("Throughput (% of iperf3 ceiling)", h.throughput, project),
    chart("Gossip delivery (%)", h.gossip_delivery, project), chart("Gossip latency (ms)", h.gossip_latency, project)));
}

function logPanel(project, box) {
  const pre = el("pre", { class: "log runner-log" });
  box.replaceChildren(pre);
  const old = logStreams.get(project);
  if (old) old.close();
  const es = new EventSource(`/api/projects/${encodeURIComponent(project)}/log`);
  es.addEventListener("line", (ev) => appendLine(pre, JSON.parse(ev.data)));
  logStreams.set(project, es);
}

function appendLine(pre, text) {
  const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(document.createTextNode(text + "\n"));
  while (pre.childNodes.length > 2000) pre.firstChild.remove();
  if (stick) pre.scrollTop = pre.scrollHeight;
}

function section(project, key, title, fill) {
  const id = project + ":" + key;
  const body = el("div", { class: "section-body" });
  const d = el("details", { class: "section-" + key, open: openDetails.has(id) }, el("summary", {}, title), body);
  d.addEventListener("toggle", () => {
    // The toggle event comes after the click; a live update may have replaced this card meanwhile.
    // Then open the section of the card now on the page (its own toggle event fills it).
    if (d.open && !d.isConnected) {
      openDetails.add(id);
      const card = document.getElementById("project-" + project);
      const live = card && card.querySelector("details.section-" + key);
      if (live && !live.open) live.open = true;
      return;
    }
    if (d.open) { openDetails.add(id); fill(body); }
    else { openDetails.delete(id); if (key === "log") { const es = logStreams.get(project); if (es) es.close(); logStreams.delete(project); } }
  });
  if (d.open) fill(body);
  return d;
}

function renderProject(v) {
  const c = v.counters || {};
  const card = el("section", { class: "project", id: "project-" + v.project, "data-project": v.project, "data-state": v.state },
    el("h2", {}, v.project, el("span", { class: "state " + v.state }, v.state), v.phase ? el("span", { class: "phase" }, v.phase) : null),
    el("p", { class: "meta" },
      `in state ${duration(v.time_in_state)} · builds ${c.build_count ?? 0} · deploys ${c.deploy_count ?? 0} · ` +
      `tests ${c.test_count ?? 0} · fix attempts ${c.fix_attempts ?? 0} · commits ${v.commits.length}` +
      (v.stop_reason ? " · stopped: " + v.stop_reason : "")),
    fleetTable(v), verdict(v), links(v),
    section(v.project, "matrix", "Connectivity matrix", (b) => b.replaceChildren(matrix(views.get(v.project) || v))),
    section(v.project, "history", "History", (b) => loadHistory(v.project, b).catch((e) => b.replaceChildren(String(e)))),
    section(v.project, "timeline", "Transitions", (b) => b.replaceChildren(timeline(views.get(v.project) || v))),
    section(v.project, "log", "Log", (b) => { if (!logStreams.has(v.project)) logPanel(v.project, b); }));
  return card;
}

function place(v) {
  views.set(v.project, v);
  const main = document.getElementById("projects");
  const old = document.getElementById("project-" + v.project);
  // An open log panel keeps its stream and text: move it into the new card.
  const logBody = old && old.querySelector(".section-log[open] .section-body");
  const card = renderProject(v);
  if (logBody) card.querySelector(".section-log .section-body").replaceWith(logBody);
  if (old) old.replaceWith(card); else {
    const empty = main.querySelector(".empty"); if (empty) empty.remove();
    main.append(card);
  }
  if (dialogNode && dialogNode.project === v.project) refreshNode();
}

async function refreshAll() {
  const o = await getJSON("/api/overview");
  const main = document.getElementById("projects");
  if (!o.projects.length) { main.replaceChildren(el("p", { class: "empty" }, "No projects in the state directory yet.")); return; }
  for (const v of o.projects) place(v);
}

const pending = new Map();
function projectChanged(project) {
  if (!project) { refreshAll(); return; }
  if (pending.has(project)) return;
  pending.set(project, setTimeout(async () => {
    pending.delete(project);
    try { place(await getJSON(`/api/projects/${encodeURIComponent(project)}`)); }
    catch (e) { refreshAll(); }
  }, 50));
}

// ---------------------------------------------------------------------------------- node dialog
async function openNode(project, node) {
  dialogNode = { project, node };
  document.getElementById("node-message").textContent = "";
  document.getElementById("node-output").textContent = "";
  await refreshNode();
  const d = document.getElementById("node-dialog");
  if (!d.open) d.showModal();
}

async function refreshNode() {
  if (!dialogNode) return;
  const { project, node } = dialogNode;
  const n = await getJSON(`/api/projects/${encodeURIComponent(project)}/nodes/${encodeURIComponent(node)}`);
  document.getElementById("node-title").textContent = `${project} / ${n.name}`;
  const rows = [
    ["Reachable", reachable(n)], ["Deployed", deployed(n)], ["Health", health(n)], ["Tests", testsComp(n)],
    ["", el("span", { class: "tip-text" }, n.tooltip)],
  ];
  const body = el("div", {},
    el("table", {}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))),
    el("h3", {}, "Failed pairs"),
    n.failed_pairs.length ? el("table", { class: "failed-pairs" },
      el("tr", {}, ["suite", "from", "to", "method", "success"].map((h) => el("th", {}, h))),
      n.failed_pairs.map((p) => el("tr", {}, el("td", {}, p.suite), el("td", {}, p.from), el("td", {}, p.to),
        el("td", {}, p.method), el("td", {}, `${p.success}/${p.attempts}`)))) : el("p", { class: "empty" }, "none"),
    el("h3", {}, "Failed tests (last run)"),
    el("pre", { class: "log failed-output" }, (n.last_run && n.last_run.output) || "none"));
  document.getElementById("node-body").replaceChildren(body);
  document.getElementById("btn-run-tests").disabled = !n.actions || n.tests_mode === "disabled" || n.tests === "blue";
  document.getElementById("btn-rollback").disabled = !n.actions;
  const out = document.getElementById("node-output");
  if (n.manual && !nodeLog) followNodeOutput(project, node);
  else if (!n.manual && !out.textContent) out.textContent = n.manual_output || "";
}

function followNodeOutput(project, node) {
  if (nodeLog) nodeLog.close();
  const out = document.getElementById("node-output");
  out.textContent = "";
  nodeLog = new EventSource(`/api/projects/${encodeURIComponent(project)}/log?node=${encodeURIComponent(node)}`);
  nodeLog.addEventListener("line", (ev) => appendLine(out, JSON.parse(ev.data)));
}

function confirmAction(title, text) {
  return new Promise((resolve) => {
    const d = document.getElementById("confirm-dialog");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    const input = document.getElementById("confirm-token");
    input.value = sessionStorage.getItem("vpstest-token") || "";
    const done = (ok) => { d.close(); cleanup(); resolve(ok ? input.value.trim() : null); };
    const okBtn = document.getElementById("confirm-ok"), cancel = document.getElementById("confirm-cancel");
    const onOk = () => done(true), onCancel = () => done(false);
    function cleanup() { okBtn.removeEventListener("click", onOk); cancel.removeEventListener("click", onCancel); }
    okBtn.addEventListener("click", onOk);
    cancel.addEventListener("click", onCancel);
    d.showModal();
  });
}

async function act(kind) {
  if (!dialogNode) return;
  const { project, node } = dialogNode;
  const title = kind === "rollback" ? `Roll ${node} back?` : `Run tests on ${node}?`;
  const text = kind === "rollback"
    ? `${node} will be stopped, its previous build restored and started again.`
    : `The suites' tests involving ${node} will run now.`;
  const token = await confirmAction(title, text);
  const msg = document.getElementById("node-message");
  if (token === null) { msg.textContent = "Cancelled."; return; }
  const r = await fetch(`/api/projects/${encodeURIComponent(project)}/nodes/${encodeURIComponent(node)}/${kind}`,
    { method: "POST", headers: { Authorization: "Bearer " + token } });
  const body = await r.json().catch(() => ({}));
  if (r.ok) {
    sessionStorage.setItem("vpstest-token", token);
    msg.textContent = kind === "rollback" ? "Rollback started." : "Tests started.";
    if (kind === "run-tests") { if (nodeLog) { nodeLog.close(); nodeLog = null; } followNodeOutput(project, node); }
  } else {
    msg.textContent = "Refused: " + (body.error || "HTTP " + r.status);
  }
}

// ---------------------------------------------------------------------------------- start
function connect() {
  const conn = document.getElementById("connection");
  const es = new EventSource("/api/stream");
  es.addEventListener("hello", () => { conn.textContent = "live"; conn.className = "conn on"; refreshAll(); });
  es.addEventListener("changed", (ev) => projectChanged(JSON.parse(ev.data).project));
  es.onerror = () => { conn.textContent = "reconnecting…"; conn.className = "conn off"; };
}

document.addEventListener("DOMContentLoaded", () => {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) { sessionStorage.setItem("vpstest-token", hash.get("token")); history.replaceState(null, "", location.pathname); }
  document.getElementById("btn-run-tests").addEventListener("click", () => act("run-tests"));
  document.getElementById("btn-rollback").addEventListener("click", () => act("rollback"));
  document.getElementById("node-dialog").addEventListener("close", () => {
    dialogNode = null; if (nodeLog) { nodeLog.close(); nodeLog = null; }
  });
  refreshAll().catch(() => {});
  connect();
});
