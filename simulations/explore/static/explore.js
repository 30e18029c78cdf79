// kdledger provenance explorer: vanilla JavaScript, no framework. Everything shown comes from /api/*;
// text from the chain (methods, uris) is only ever set as text, never parsed as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const KINDS = ["student", "aggregate", "merkle-root", "teacher", "ebm", "generator", "data node"];
const COLOURS = ["#2563eb", "#d97706", "#0d9488", "#7c3aed", "#db2777", "#65a30d", "#0891b2", "#9333ea"];
const state = { source: 0, sources: [], events: [], txs: [], roles: {}, students: [] };

// ---- small helpers ------------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}
function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}
const $ = (id) => document.getElementById(id);
const lower = (x) => String(x || "").toLowerCase();
const short = (x, keep = 8) => (!x ? "–" : x.length > keep + 6 ? `${x.slice(0, keep)}…${x.slice(-4)}` : x);
const pct = (bps) => (bps === null || bps === undefined ? "–" : `${(bps / 100).toFixed(2)}%`);
const isHash = (x) => typeof x === "string" && /^0x[0-9a-fA-F]{64}$/.test(x);
const isAddress = (x) => typeof x === "string" && /^0x[0-9a-fA-F]{40}$/.test(x);

async function api(path) {
  const sep = path.includes("?") ? "&" : "?";
  const r = await fetch(`/api/${path}${sep}source=${state.source}`, { cache: "no-store" });
  if (!r.ok && r.status !== 404) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function modelLink(hash, text) {
  return h("a", { href: `#model=${lower(hash)}`, class: "hash", title: hash, "data-model": lower(hash) }, text || short(hash));
}
function txLink(tx, text) {
  return h("a", { href: `#tx=${lower(tx)}`, class: "hash", title: `transaction ${tx}`, "data-tx": lower(tx) }, text || short(tx));
}
function blockLink(n) {
  return h("a", { href: `#block=${n}`, title: `block ${n}` }, String(n));
}
function nodeLink(addr, text) {
  return h("a", { href: `#node=${lower(addr)}`, class: "hash", title: addr }, text || short(addr, 10));
}
function copyButton(text) {
  return h("button", {
    class: "copy", type: "button", title: "copy", onclick: (ev) => {
      ev.preventDefault();
      navigator.clipboard && navigator.clipboard.writeText(text);
    },
  }, "copy");
}
function facts(pairs) {
  const dl = h("dl", { class: "facts" });
  for (const [k, v] of pairs) if (v !== null && v !== undefined && v !== "") dl.append(h("dt", {}, k), h("dd", {}, v));
  return dl;
}
function kindBadge(kind) {
  return h("span", { class: `badge ${kind}` }, kind);
}

// ---- loading ------------------------------------------------------------------------------------------------
async function load() {
  const params = new URLSearchParams(location.search);
  state.source = Number(params.get("source") || state.source || 0);
  state.sources = await (await fetch("/api/sources", { cache: "no-store" })).json();
  const select = $("source");
  select.replaceChildren(...state.sources.map((src) => h("option", { value: src.id }, src.rpc_url ? `${src.label} · ${short(src.contract, 10)}` : src.label)));
  select.value = String(state.source);
  select.hidden = state.sources.length < 2;
  const [students, tables, events, txs] = await Promise.all([api("students"), api("accuracies"), api("events"), api("transactions")]);
  const src = state.sources[state.source];
  Object.assign(state, { students, events, txs, roles: src ? src.roles : {} });
  renderSummary(src);
  renderStudents(students);
  renderAccuracies(tables);
  renderEvents();
  route();
  document.body.dataset.ready = "1";
}

function renderSummary(src) {
  const box = $("summary");
  if (!src) {
    box.replaceChildren(h("p", { class: "error" }, "no source"));
    return;
  }
  const stat = (value, label, cls) => h("div", { class: `stat ${cls || ""}` }, h("b", {}, value), h("span", {}, label));
  box.replaceChildren(
    stat(src.label, src.rpc_url ? "chain" : "run directory", "wide"),
    stat(h("span", { class: "mono" }, short(src.contract, 10)), `ModelRegistry · chain ${src.chain_id}`),
    stat(src.students.length, src.students.length === 1 ? "student" : "students"),
    stat(src.models, "models registered"),
    stat(src.events, "events"),
    stat(src.transactions, "transactions"),
    stat(src.blocks, "blocks"),
  );
  box.querySelector(".stat.wide b").title = src.backend || "";
}

// ---- students and their lineage graphs ----------------------------------------------------------------------
function renderStudents(students) {
  const list = $("student-list");
  if (!students.length) {
    list.replaceChildren(h("p", { class: "muted" }, "No student is registered here."));
    return;
  }
  list.replaceChildren(...students.map(studentCard));
}

function studentCard(st) {
  const card = h("article", { class: "student", "data-student": st.model_hash });
  card.append(
    h("h3", {}, kindBadge("student"), " ", modelLink(st.model_hash, st.model_hash), copyButton(st.model_hash)),
    facts([
      ["method", h("b", {}, st.method)],
      ["distilled from", `${st.teachers.length} registered model${st.teachers.length === 1 ? "" : "s"}`],
      ["synthetic samples", st.sample_count],
      ["config hash", h("span", { class: "mono" }, st.config_hash)],
      ["committed by", h("span", {}, "distiller ", nodeLink(st.owner))],
      ["block · tx", h("span", {}, blockLink(st.block), " · ", txLink(st.tx))],
      ["run id", h("span", { class: "mono" }, short(st.run_id, 18))],
    ]),
  );
  card.append(configBlock(st));
  if (st.graph) card.append(h("div", { class: "graph-wrap" }, drawLineage(st.graph)), legend());
  return card;
}

function configBlock(st) {
  const c = st.config;
  if (!c) {
    return h("p", { class: "muted" }, "Configuration: only its hash is on-chain (no run directory of this run was given).");
  }
  if (!c.readable) return h("p", { class: "check bad" }, `config.json in ${c.run_dir} cannot be read`);
  const verdict = c.matches_chain
    ? h("span", { class: "check ok", "data-config": "match" }, "✔ its SHA-256 is the on-chain config hash")
    : h("span", { class: "check bad", "data-config": "differs" }, `✘ its SHA-256 ${short(c.sha256)} is not the on-chain config hash`);
  const grid = h("div", { class: "config-grid" });
  const doc = c.document || {};
  const sections = Object.entries(doc).filter(([, v]) => v && typeof v === "object" && !Array.isArray(v));
  const scalars = Object.entries(doc).filter(([, v]) => v === null || typeof v !== "object");
  if (scalars.length) sections.unshift(["run", Object.fromEntries(scalars)]);
  for (const [name, body] of sections) {
    const sec = h("section", {}, h("h4", {}, name === "as_run" ? "as run" : name));
    for (const [k, v] of Object.entries(body)) {
      const text = v !== null && typeof v === "object" ? JSON.stringify(v) : String(v);
      sec.append(h("div", {}, h("span", {}, k), h("span", { title: text }, text.length > 60 ? text.slice(0, 57) + "…" : text)));
    }
    grid.append(sec);
  }
  return h("details", { class: "config" },
    h("summary", {}, "Configuration: ", h("span", { class: "mono" }, c.path), " — ", verdict), grid);
}

function drawLineage(graph) {
  const W = 178, H = 46, GAPX = 86, GAPY = 12, TOP = 26, PAD = 6;
  const layers = Math.max(...graph.nodes.map((n) => n.layer)) + 1;
  const columns = Array.from({ length: layers }, () => []);
  for (const n of graph.nodes) columns[n.layer].push(n);
  const tallest = Math.max(...columns.map((c) => c.length + (graph.hidden[c[0] && c[0].layer] ? 1 : 0)));
  const height = TOP + tallest * (H + GAPY) + PAD;
  const width = layers * W + (layers - 1) * GAPX + 2 * PAD;
  const svg = s("svg", { class: "lineage", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `lineage of ${graph.root}`, "data-root": graph.root });
  const pos = {};
  columns.forEach((col, layer) => {
    const x = PAD + (layers - 1 - layer) * (W + GAPX); // the student on the right, the data nodes on the left
    const extra = graph.hidden[layer] ? 1 : 0;
    const y0 = TOP + ((tallest - col.length - extra) * (H + GAPY)) / 2;
    col.forEach((n, i) => (pos[n.id] = { x, y: y0 + i * (H + GAPY) }));
    const kinds = [...new Set(col.map((n) => n.kind))];
    svg.append(s("text", { class: "col-title", x: x + W / 2, y: 14, "text-anchor": "middle" },
      kinds.length === 1 ? plural(kinds[0], col.length) : `sources (${col.length})`));
    if (extra) {
      svg.append(s("text", { class: "more", x: x + W / 2, y: y0 + col.length * (H + GAPY) + H / 2, "text-anchor": "middle" },
        `+ ${graph.hidden[layer]} more`));
    }
  });
  const edges = s("g", {});
  for (const e of graph.edges) {
    const a = pos[e.source], b = pos[e.target];
    if (!a || !b) continue;
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2, mx = (x1 + x2) / 2;
    edges.append(s("path", { class: "gedge", d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
      "data-source": lower(e.source), "data-target": lower(e.target) }));
  }
  svg.append(edges);
  for (const n of graph.nodes) {
    const p = pos[n.id];
    const colour = kindColour(n.kind);
    const title = n.type === "data-node" ? `data node ${n.id}` : `${n.kind} ${n.id}${n.owner ? `\nby ${n.owner}` : ""}`;
    const label = n.type === "data-node" ? "data node" : n.kind === "aggregate" || n.kind === "student" ? `${n.kind} · ${n.method}` : n.kind || "not registered";
    const g = s("g", { class: `gnode kind-${(n.kind || "unknown").replace(" ", "-")}`, "data-id": lower(n.id), "data-kind": n.kind,
      "data-type": n.type, tabindex: 0, role: "link", transform: `translate(${p.x},${p.y})` },
      s("title", {}, title),
      s("rect", { width: W, height: H, rx: 8, stroke: colour }),
      s("rect", { width: 5, height: H, rx: 2, fill: colour, stroke: "none" }),
      s("text", { class: "k", x: 14, y: 19, fill: colour }, label.length > 24 ? label.slice(0, 23) + "…" : label),
      s("text", { class: "h", x: 14, y: 36 }, short(n.id, 10)));
    const target = n.type === "data-node" ? `#node=${lower(n.id)}` : `#model=${lower(n.id)}`;
    g.addEventListener("click", () => (location.hash = target));
    g.addEventListener("keydown", (ev) => ev.key === "Enter" && (location.hash = target));
    svg.append(g);
  }
  return svg;
}

function plural(kind, n) {
  const word = kind === "data node" ? "data node" : kind;
  return n === 1 ? word : `${word}s (${n})`;
}
function kindColour(kind) {
  const css = getComputedStyle(document.documentElement);
  const name = { "data node": "--data" }[kind] || `--${kind}`;
  return css.getPropertyValue(name).trim() || "#4b5563";
}
function legend() {
  return h("div", { class: "legend" }, KINDS.map((k) => {
    const i = h("i", {});
    i.style.background = kindColour(k);
    return h("span", {}, i, k);
  }));
}

// ---- accuracies ---------------------------------------------------------------------------------------------
function renderAccuracies(tables) {
  const list = $("accuracy-list");
  if (!tables.length) {
    list.replaceChildren(h("p", { class: "muted" }, "No accuracy is attested here."));
    return;
  }
  list.replaceChildren(...tables.map((t) => h("div", { class: "acc-block" },
    tables.length > 1 ? h("h3", {}, "run ", h("span", { class: "mono" }, short(t.run_id, 18))) : null,
    h("div", { class: "acc-run" }, h("div", { class: "table-wrap" }, accuracyTable(t)), h("div", {}, accuracyChart(t))))));
}

function accuracyTable(t) {
  const head = h("tr", {}, h("th", {}, "data node"), t.columns.map((c) =>
    h("th", { class: "num", "data-column": c.key },
      c.model ? h("a", { href: `#model=${lower(c.model)}`, title: c.model, "data-model": lower(c.model) }, c.label) : c.label)));
  const rows = t.nodes.map((node) => h("tr", { "data-node": lower(node) }, h("td", {}, nodeLink(node)), t.columns.map((c) => {
    const cell = t.cells[node][c.key];
    if (!cell) return h("td", { class: "num muted" }, "–");
    return h("td", { class: "num", "data-column": c.key, "data-bps": cell.accuracy_bps,
      title: `${cell.num_examples} private examples; attested in block ${cell.block}, tx ${cell.tx}` },
      modelLink(cell.model, pct(cell.accuracy_bps)),
      h("span", { class: "n" }, `n ${cell.num_examples} · `, txLink(cell.tx, "tx")));
  })));
  const mean = h("tr", { class: "mean" }, h("td", {}, "weighted mean"),
    t.columns.map((c) => h("td", { class: "num", "data-column": c.key, "data-bps": c.weighted_mean_bps }, pct(c.weighted_mean_bps))));
  return h("table", { class: "acc", "data-run": t.run_id }, h("thead", {}, head), h("tbody", {}, rows, mean));
}

function accuracyChart(t) {
  const CHART_NODES = 24; // a federation of hundreds: the first nodes and the mean; the table has them all
  const groups = [...t.nodes.slice(0, CHART_NODES).map((n) => ({ label: short(n, 6), key: n, cells: t.cells[n] })),
    { label: "weighted mean", key: "mean", cells: Object.fromEntries(t.columns.map((c) => [c.key, { accuracy_bps: c.weighted_mean_bps }])) }];
  const bar = Math.max(7, Math.min(18, 90 / t.columns.length)), gap = 30, left = 40, top = 10, plotH = 190;
  const groupW = bar * t.columns.length;
  const width = left + groups.length * (groupW + gap) + 10, height = top + plotH + 50;
  const svg = s("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "attested accuracy per node" });
  const y = (bps) => top + plotH - (plotH * bps) / 10000;
  for (let v = 0; v <= 100; v += 20) {
    svg.append(s("line", { class: v ? "grid" : "axis", x1: left, x2: width - 6, y1: y(v * 100), y2: y(v * 100) }),
      s("text", { x: left - 6, y: y(v * 100) + 4, "text-anchor": "end" }, `${v}%`));
  }
  groups.forEach((g, gi) => {
    const x0 = left + 8 + gi * (groupW + gap);
    t.columns.forEach((c, ci) => {
      const cell = g.cells[c.key];
      if (!cell || cell.accuracy_bps === null || cell.accuracy_bps === undefined) return;
      svg.append(s("rect", { class: "bar", x: x0 + ci * bar, y: y(cell.accuracy_bps), width: bar - 2,
        height: top + plotH - y(cell.accuracy_bps), fill: COLOURS[ci % COLOURS.length], rx: 2,
        "data-node": lower(g.key), "data-column": c.key, "data-bps": cell.accuracy_bps },
        s("title", {}, `${g.key === "mean" ? "weighted mean" : g.key}\n${c.label}: ${pct(cell.accuracy_bps)}`)));
    });
    svg.append(s("text", { x: x0 + groupW / 2, y: top + plotH + 16, "text-anchor": "middle" }, g.label));
  });
  const legendRow = s("g", { transform: `translate(${left},${top + plotH + 32})` });
  let lx = 0;
  t.columns.forEach((c, ci) => {
    legendRow.append(s("rect", { x: lx, y: 0, width: 10, height: 10, rx: 2, fill: COLOURS[ci % COLOURS.length] }),
      s("text", { x: lx + 14, y: 9 }, c.label));
    lx += 24 + 6.5 * c.label.length;
  });
  svg.append(legendRow);
  if (t.nodes.length > CHART_NODES) {
    return h("div", {}, svg, h("p", { class: "muted" }, `The first ${CHART_NODES} of ${t.nodes.length} nodes, and the mean over all.`));
  }
  return svg;
}

// ---- the event log ------------------------------------------------------------------------------------------
const RECORD_KEYS = ["modelHash"];
const BY_KEYS = ["node", "distiller", "coordinator", "account"];

function renderEvents() {
  const kinds = [...new Set(state.events.map((e) => e.event))];
  const kindSelect = $("event-kind");
  const chosen = kindSelect.value;
  kindSelect.replaceChildren(h("option", { value: "" }, "every event"), ...kinds.map((k) => h("option", { value: k }, k)));
  kindSelect.value = kinds.includes(chosen) ? chosen : "";
  filterEvents();
}

function filterEvents() {
  const needle = lower($("event-filter").value.trim());
  const kind = $("event-kind").value;
  const shown = state.events.filter((e) => (!kind || e.event === kind) && (!needle || lower(JSON.stringify(e)).includes(needle)));
  $("event-count").textContent = `${shown.length} of ${state.events.length}`;
  $("event-table").tBodies[0].replaceChildren(...shown.map(eventRow));
  highlight();
}

function eventRow(e) {
  const a = e.args;
  const record = RECORD_KEYS.filter((k) => a[k]).map((k) => modelLink(a[k]));
  const byKey = BY_KEYS.find((k) => a[k]);
  const details = h("span", { class: "args" });
  for (const [k, v] of Object.entries(a)) {
    if (RECORD_KEYS.includes(k) || k === byKey) continue;
    let shownValue;
    if (k === "accuracyBps") shownValue = pct(v);
    else if (k === "role") shownValue = state.roles[lower(v)] || short(v);
    else if (Array.isArray(v)) shownValue = v.map((x, i) => [i ? ", " : "", isHash(x) ? modelLink(x) : String(x)]);
    else if (isAddress(v)) shownValue = nodeLink(v);
    else if (k === "kind") shownValue = ["", "teacher", "ebm", "generator", "student", "aggregate", "merkle-root"][v] || String(v);
    else if (isHash(v) || (typeof v === "string" && v.length > 40)) shownValue = h("span", { class: "mono", title: v }, short(v, 12));
    else shownValue = String(v);
    details.append(h("span", {}, h("span", { class: "muted" }, `${k} `), shownValue));
  }
  return h("tr", { "data-tx": lower(e.tx), "data-block": e.block, "data-event": e.event },
    h("td", {}, blockLink(e.block)), h("td", {}, txLink(e.tx)), h("td", { class: "ev" }, e.event),
    h("td", {}, record), h("td", {}, byKey ? nodeLink(a[byKey]) : ""), h("td", {}, details));
}

function highlight() {
  const m = location.hash.match(/^#(tx|block)=(.+)$/);
  for (const tr of $("event-table").tBodies[0].rows) {
    tr.classList.toggle("hl", !!m && ((m[1] === "tx" && tr.dataset.tx === m[2]) || (m[1] === "block" && tr.dataset.block === m[2])));
  }
}

// ---- the record panel: a model, a transaction, a block, a data node ----------------------------------------
async function route() {
  highlight();
  const m = location.hash.match(/^#(model|tx|block|node)=(.+)$/);
  const panel = $("panel");
  if (!m) {
    panel.hidden = true;
    return;
  }
  const body = $("panel-body");
  const [, what, key] = m;
  let content;
  if (what === "model") content = await modelPanel(key);
  else if (what === "tx") content = txPanel(key);
  else if (what === "block") content = blockPanel(Number(key));
  else content = nodePanel(key);
  body.replaceChildren(...content);
  panel.hidden = false;
  panel.dataset.showing = `${what}=${key}`;
  panel.scrollTop = 0;
}

async function modelPanel(hash) {
  const r = await api(`models/${hash}`);
  if (r.error) return [h("h2", {}, "Not registered"), h("p", { class: "mono" }, hash), h("p", {}, "No record of this hash here.")];
  const out = [
    h("h2", {}, kindBadge(r.kind), " record"),
    h("p", { class: "mono" }, r.model_hash, copyButton(r.model_hash)),
    facts([
      ["registered by", h("span", {}, roleOf(r.kind), " ", nodeLink(r.owner, r.owner))],
      ["block", blockLink(r.block)],
      ["transaction", txLink(r.tx, r.tx)],
      ["run id", h("span", { class: "mono" }, r.run_id)],
      ["round", r.kind === "student" ? null : r.round],
      ["method", r.method],
      ["config hash", r.config_hash && h("span", { class: "mono" }, r.config_hash)],
      ["synthetic samples", r.sample_count],
      ["training examples", r.example_count],
      ["signed publications", r.leaf_count],
      ["proven in merkle root", r.merkle_root && modelLink(r.merkle_root, r.merkle_root)],
      ["uri", h("span", { class: "mono" }, r.uri)],
      ["file", r.file === undefined || r.file === null
        ? h("span", { class: "muted" }, "not in the run directories given")
        : h("span", {}, h("span", { class: "mono" }, r.file), " ", h("span", { class: "check ok" }, "✔ hash checked"))],
    ]),
  ];
  if (r.teachers.length) out.push(h("h3", {}, `Made from ${r.teachers.length}`), h("ul", {}, r.teachers.map((t) => h("li", {}, modelLink(t, t)))));
  if (r.used_by.length) {
    out.push(h("h3", {}, "In the lineage of"), h("ul", {}, r.used_by.map((u) =>
      h("li", {}, kindBadge(u.kind), " ", modelLink(u.model_hash), u.method ? ` (${u.method})` : ""))));
  }
  out.push(h("h3", {}, "Attested accuracies"));
  out.push(r.accuracies.length
    ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "node"), h("th", {}, "accuracy"), h("th", {}, "examples"), h("th", {}, "block"), h("th", {}, "tx"))),
      h("tbody", {}, r.accuracies.map((a) => h("tr", {}, h("td", {}, nodeLink(a.node)), h("td", {}, pct(a.accuracy_bps)),
        h("td", {}, a.num_examples), h("td", {}, blockLink(a.block)), h("td", {}, txLink(a.tx))))))
    : h("p", { class: "muted" }, "none"));
  return out;
}

function roleOf(kind) {
  return { student: "distiller", aggregate: "coordinator", "merkle-root": "relayer" }[kind] || "data node";
}

function eventList(events) {
  return h("ul", {}, events.map((e) => h("li", {}, h("b", {}, e.event), " ",
    e.args.modelHash ? modelLink(e.args.modelHash) : "",
    e.args.accuracyBps !== undefined ? ` ${pct(e.args.accuracyBps)} by ` : "",
    e.args.accuracyBps !== undefined ? nodeLink(e.args.node) : "",
    e.event.startsWith("Role") ? ` ${state.roles[lower(e.args.role)] || short(e.args.role)} → ` : "",
    e.event.startsWith("Role") ? nodeLink(e.args.account) : "")));
}

function txPanel(tx) {
  const events = state.events.filter((e) => lower(e.tx) === tx);
  const info = state.txs.find((t) => lower(t.tx) === tx);
  if (!events.length) return [h("h2", {}, "Transaction"), h("p", { class: "mono" }, tx), h("p", {}, "No event of this registry is in it.")];
  return [
    h("h2", {}, "Transaction"),
    h("p", { class: "mono" }, events[0].tx, copyButton(events[0].tx)),
    facts([
      ["block", blockLink(events[0].block)],
      ["events", events.length],
      ["what (run directory)", info && info.what.length ? info.what.join(", ") : null],
      ["gas", info && info.gas],
    ]),
    h("h3", {}, "Its events"),
    eventList(events),
  ];
}

function blockPanel(n) {
  const events = state.events.filter((e) => e.block === n);
  const txs = [...new Set(events.map((e) => e.tx))];
  return [
    h("h2", {}, `Block ${n}`),
    facts([["transactions", txs.length], ["events", events.length]]),
    h("h3", {}, "Transactions"),
    h("ul", {}, txs.map((t) => h("li", {}, txLink(t, t)))),
    h("h3", {}, "Events"),
    eventList(events),
  ];
}

function nodePanel(addr) {
  const mine = state.events.filter((e) => Object.values(e.args).some((v) => lower(v) === addr));
  const published = mine.filter((e) => e.event === "TeacherRegistered" || e.event === "AggregateRegistered" || e.event === "StudentCommitted");
  const attested = mine.filter((e) => e.event === "AccuracyAttested");
  const roles = mine.filter((e) => e.event === "RoleGranted" && lower(e.args.account) === addr).map((e) => state.roles[lower(e.args.role)] || short(e.args.role));
  const name = (mine.find((e) => Object.values(e.args).some((v) => lower(v) === addr)) || { args: {} });
  const full = Object.values(name.args).find((v) => lower(v) === addr) || addr;
  return [
    h("h2", {}, "Account"),
    h("p", { class: "mono" }, full, copyButton(full)),
    facts([["roles granted", roles.join(", ") || null], ["records registered", published.length], ["attestations signed", attested.length]]),
    published.length ? h("h3", {}, "Records") : null,
    published.length ? eventList(published) : null,
    attested.length ? h("h3", {}, "Attestations") : null,
    attested.length ? eventList(attested) : null,
  ].filter(Boolean);
}

// ---- verify a file ------------------------------------------------------------------------------------------
async function verifyFile(file) {
  const box = $("verify-result");
  box.hidden = false;
  box.className = "verify-result busy";
  box.dataset.status = "hashing";
  box.replaceChildren(`Hashing ${file.name} (${file.size.toLocaleString()} bytes)…`);
  if (!(window.crypto && crypto.subtle)) {
    box.className = "verify-result bad";
    box.dataset.status = "error";
    box.replaceChildren("This browser offers no WebCrypto here (open the page at http://127.0.0.1).");
    return;
  }
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  const hex = "0x" + Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  const r = await (await fetch(`/api/verify/${hex}`, { cache: "no-store" })).json();
  box.dataset.sha256 = hex;
  if (r.registered) {
    box.className = "verify-result ok";
    box.dataset.status = "registered";
    box.replaceChildren(
      h("div", { class: "verdict" }, "✔ Registered"),
      h("div", {}, h("b", {}, file.name), " hashes to ", h("span", { class: "mono" }, short(hex, 14)), "."),
      ...r.matches.map((m) => h("div", { class: "match", "data-source": m.source },
        facts([
          ["kind", kindBadge(m.kind)],
          ["by", h("span", {}, roleOf(m.kind), " ", nodeLink(m.by))],
          ["block · tx", h("span", {}, blockLink(m.block), " · ", txLink(m.tx))],
          ["record", modelLink(m.model_hash)],
          ["source", m.source === state.source ? null : h("a", { href: `#model=${lower(m.model_hash)}` }, "open its source")],
          ["where", r.matches.length > 1 || state.sources.length > 1 ? m.label : `chain ${m.chain_id}`],
        ]),
        m.kind === "student" ? h("div", {}, "It is itself a student.") : null,
        m.students.length
          ? h("div", {}, "In the lineage of ", m.students.length === 1 ? "the student" : `${m.students.length} students`, ":",
            h("ul", {}, m.students.map((st) => h("li", {}, modelLink(st)))))
          : m.kind !== "student" ? h("div", { class: "muted" }, "No student names it in its lineage.") : null)),
    );
    for (const div of box.querySelectorAll(".match")) { // a record of another source: its links open that source
      if (Number(div.dataset.source) === state.source) continue;
      for (const a of div.querySelectorAll("a[href^='#']")) a.setAttribute("href", `?source=${div.dataset.source}${a.getAttribute("href")}`);
    }
  } else {
    box.className = "verify-result bad";
    box.dataset.status = "not-registered";
    const where = state.sources.map((src) => `chain ${src.chain_id} at ${short(src.contract, 10)}`).join("; ");
    box.replaceChildren(
      h("div", { class: "verdict" }, "✘ Not registered"),
      h("div", {}, h("b", {}, file.name), " hashes to ", h("span", { class: "mono", title: hex }, short(hex, 14)),
        `, which no record on ${where} carries. It is not a file the chain vouches for: changed since, or never registered.`),
    );
  }
}

// ---- wiring -------------------------------------------------------------------------------------------------
function wire() {
  const drop = $("drop"), input = $("file");
  input.addEventListener("change", () => input.files[0] && verifyFile(input.files[0]));
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer.files[0]) verifyFile(e.dataTransfer.files[0]);
  });
  $("event-filter").addEventListener("input", filterEvents);
  $("event-kind").addEventListener("change", filterEvents);
  $("panel-close").addEventListener("click", () => history.pushState(null, "", location.pathname + location.search) || route());
  document.addEventListener("keydown", (e) => e.key === "Escape" && !$("panel").hidden && $("panel-close").click());
  $("source").addEventListener("change", (e) => {
    history.pushState(null, "", `?source=${e.target.value}`);
    load();
  });
  $("reload").addEventListener("click", async () => {
    const r = await fetch("/api/reload", { method: "POST" });
    if (!r.ok) {
      const why = (await r.json().catch(() => ({}))).error || `HTTP ${r.status}`;
      $("summary").prepend(h("p", { class: "error", role: "alert" }, `Reload failed: ${why}`));
      return;
    }
    load();
  });
  window.addEventListener("hashchange", route);
}

wire();
load().catch((err) => {
  $("summary").replaceChildren(h("p", { class: "error" }, `Cannot read the explorer's API: ${err.message}`));
});
