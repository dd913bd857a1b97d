// swe-aem view: one page over a run folder. Data comes as scripts (data/**.js) that call
// SWEAEM.put(name, data): that loads from file:// and from `swe-aem view --port` alike.
// Routes: #/R/run, #/R/set/ID, #/R/group/ID/G, #/R/ep/ID/OFFSET, #/compare (R: run 0 or 1).
"use strict";

const SWEAEM = (window.SWEAEM = { waiting: {}, data: {} });
SWEAEM.put = (name, value) => {
  SWEAEM.data[name] = value;
  (SWEAEM.waiting[name] || []).forEach((w) => w.resolve(value));
  delete SWEAEM.waiting[name];
};

function load(path, name, fresh) {
  if (!fresh && name in SWEAEM.data) return Promise.resolve(SWEAEM.data[name]);
  return new Promise((resolve, reject) => {
    (SWEAEM.waiting[name] = SWEAEM.waiting[name] || []).push({ resolve, reject });
    const s = document.createElement("script");
    s.src = path + (location.protocol.startsWith("http") ? "?t=" + Date.now() : "");
    s.onload = () => s.remove();
    s.onerror = () => {
      s.remove();
      (SWEAEM.waiting[name] || []).forEach((w) => w.reject(new Error("could not load " + path)));
      delete SWEAEM.waiting[name];
    };
    document.head.appendChild(s);
  });
}
const manifest = (fresh) => load("data/manifest.js", "manifest", fresh);
const runData = (r, fresh) => load(`data/${r}/run.js`, `${r}/run`, fresh);
const setData = (r, id, fresh) => load(`data/${r}/set-${id}.js`, `${r}/set-${id}`, fresh);
const groupData = (r, id, g, fresh) => load(`data/${r}/grp-${id}-${g}.js`, `${r}/grp-${id}-${g}`, fresh);
const epData = (r, id, off, fresh) => load(`data/${r}/ep-${id}-${off}.js`, `${r}/ep-${id}-${off}`, fresh);

// ---------------------------------------------------------------- small DOM helpers
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.appendChild(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
// d decimals; a small non-zero value (a group's entropy range of 1e-5) keeps 3 significant digits
const fmt = (x, d = 3) =>
  x === null || x === undefined ? "–" : typeof x !== "number" ? String(x) : Number.isInteger(x) ? String(x)
    : x !== 0 && Math.abs(x) < 10 ** -d ? x.toExponential(2) : x.toFixed(d);
const link = (href, ...kids) => h("a", { href }, ...kids);
const mainEl = () => document.getElementById("main");

// ---------------------------------------------------------------- charts (inline SVG)
const COLORS = ["#1c7ed6", "#e8590c", "#2b8a3e", "#5f3dc4", "#c92a2a", "#0b7285", "#862e9c"];
function chart(title, series) {
  const W = 330, H = 150, P = { l: 44, r: 8, t: 8, b: 22 };
  const pts = series.flatMap((s) => s.pts).filter((p) => Number.isFinite(p[1]));
  if (!pts.length) return null;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 0.5; y1 += Math.abs(y1) * 0.1 || 0.5; }
  const X = (x) => P.l + ((x - x0) / (x1 - x0)) * (W - P.l - P.r);
  const Y = (y) => H - P.b - ((y - y0) / (y1 - y0)) * (H - P.t - P.b);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", "100%");
  const add = (tag, a, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(a)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.appendChild(e);
  };
  add("line", { x1: P.l, y1: H - P.b, x2: W - P.r, y2: H - P.b, stroke: "#bbb" });
  add("line", { x1: P.l, y1: P.t, x2: P.l, y2: H - P.b, stroke: "#bbb" });
  add("text", { x: P.l - 4, y: P.t + 8, "text-anchor": "end", "font-size": 10, fill: "#666" }, fmt(y1));
  add("text", { x: P.l - 4, y: H - P.b, "text-anchor": "end", "font-size": 10, fill: "#666" }, fmt(y0));
  add("text", { x: P.l, y: H - 6, "font-size": 10, fill: "#666" }, "step " + fmt(x0));
  add("text", { x: W - P.r, y: H - 6, "text-anchor": "end", "font-size": 10, fill: "#666" }, fmt(x1));
  series.forEach((s, i) => {
    const good = s.pts.filter((p) => Number.isFinite(p[1]));
    const color = COLORS[(s.color ?? i) % COLORS.length];
    if (good.length > 1)
      add("polyline", { points: good.map((p) => `${X(p[0])},${Y(p[1])}`).join(" "), fill: "none", stroke: color,
        "stroke-width": 1.6, "stroke-dasharray": s.dash ? "4 3" : "" });
    good.forEach((p) => add("circle", { cx: X(p[0]), cy: Y(p[1]), r: 2.4, fill: color }));
  });
  return h("div", { class: "chart", "data-chart": title }, h("h3", {}, title), svg,
    h("div", { class: "legend" }, series.map((s, i) =>
      h("span", { style: `color:${COLORS[(s.color ?? i) % COLORS.length]}`, "data-run": s.run, "data-key": s.key,
        "data-points": s.pts.filter((p) => Number.isFinite(p[1])).length }, (s.dash ? "- - " : "— ") + s.name))));
}

const CURVES = [
  ["reward", ["reward_mean", "resolve_rate", "task_any_resolved"]],
  ["groups with signal", ["groups_with_signal", "groups_kept", "groups_dropped"]],
  ["response entropy (nats)", ["response_entropy_mean"]],
  ["AEM alpha range", ["alpha_min", "alpha_max", "alpha_std"]],
  ["staleness (versions)", ["staleness_max", "staleness_mean"]],
  ["trainer idle share", ["trainer_idle_share"]],
  ["step time split (s)", ["time_rollout_s", "time_forward_s", "time_credit_s", "time_update_s", "time_weight_sync_s"]],
  ["policy loss", ["loss"]],
  ["clip fraction", ["clip_frac"]],
  ["KL rollout vs trainer", ["rollout_trainer_kl"]],
  ["learning rate", ["lr"]],
  ["host memory (GiB)", ["host_rss_gib", "host_peak_rss_gib"]],
];
function curves(runs) {
  // runs: [{name, metrics, dash}]: B is drawn dashed over A
  const grid = h("div", { class: "grid" });
  for (const [title, keys] of CURVES) {
    const series = [];
    runs.forEach((run) => keys.forEach((k, i) => {
      if (run.metrics.some((m) => k in m))
        series.push({ name: (runs.length > 1 ? run.name + ": " : "") + k, color: i, dash: run.dash, run: run.name, key: k,
          pts: run.metrics.map((m) => [m.step, m[k] ?? NaN]) });
    }));
    const c = series.length && chart(title, series);
    if (c) grid.appendChild(c);
  }
  return grid;
}

// ---------------------------------------------------------------- navigation
async function nav(r) {
  const m = await manifest();
  const run = await runData(r);
  const el = document.getElementById("nav");
  el.replaceChildren(
    ...m.runs.map((x, i) => link(`#/${i}/run`, (m.runs.length > 1 ? "ABCD"[i] + ": " : "") + x.name)),
    run.sets.length ? link(`#/${r}/set/${run.sets[0].id}`, "episodes") : "",
    m.runs.length > 1 ? link("#/compare", "compare") : "");
  document.getElementById("live").textContent = m.live ? "live: refreshing every 3 s" : "";
}

// ---------------------------------------------------------------- the run
async function viewRun(r) {
  const run = await runData(r);
  const m = await manifest();
  const out = [h("h1", {}, run.name, " ", h("span", { class: "tag" }, run.kind))];
  out.push(h("p", { class: "muted" }, run.path));
  if (run.bad_lines.length)
    out.push(h("div", { class: "card bad" }, h("b", {}, "malformed or half-written lines"),
      h("ul", {}, run.bad_lines.map((b) => h("li", {}, b)))));
  if (run.kind === "train") {
    const a = run.aem;
    out.push(h("div", { class: "card" }, `AEM ${a.enabled ? "on" : "off"}`,
      a.enabled ? ` · lambda ${fmt(a.lambda)} · level ${a.level} · min_range ${fmt(a.min_range)}` : "",
      a.advantage ? ` · estimator ${a.advantage}` : "", ` · ${run.metrics.length} steps logged`));
    const held = run.other_rows.filter((x) => String(x.kind).startsWith("heldout"));
    if (held.length)
      out.push(h("h2", {}, "held-out resolve rate"), table(["phase", "step", "resolve rate", "tasks", "excluded"],
        held.map((x) => [x.kind.replace("heldout_", "") + " RL", x.step, fmt(x.heldout_resolve_rate), x.heldout_tasks, x.heldout_excluded])));
    const runs = [{ name: m.runs[r].name, metrics: run.metrics }];
    if (m.runs.length > 1 && m.runs[1 - r].kind === "train")
      runs.push({ name: m.runs[1 - r].name, metrics: (await runData(1 - r)).metrics, dash: true });
    out.push(h("h2", {}, "curves"), curves(runs));
    out.push(h("h2", {}, "skipped steps"), h("p", {}, run.skipped.length ? run.skipped.join(", ") : "none"));
  }
  if (run.eval) {
    const s = run.eval.summary || {};
    out.push(h("h2", {}, "evaluation"), table(["", ""], Object.entries(s).filter(([, v]) => typeof v !== "object")
      .map(([k, v]) => [k, fmt(v)])));
  }
  out.push(h("h2", {}, `dropped episodes (${run.dropped.length})`),
    run.dropped.length ? table(["step", "task", "sample", "reason"],
      run.dropped.map((d) => [d.step ?? "", d.instance_id ?? "", d.sample_index ?? "", d.reason ?? JSON.stringify(d)])) :
      h("p", { class: "muted" }, "none"));
  out.push(h("h2", {}, "episode sets"), table(["set", "episodes", "bad lines", "credit record"],
    run.sets.map((s) => [link(`#/${r}/set/${s.id}`, s.label), s.episodes, s.bad, s.credit ? "yes" : "no"])));
  if (run.config) out.push(h("h2", {}, "resolved config"), h("details", {}, h("summary", {}, "config.yaml"), h("pre", {}, run.config)));
  return out;
}

function table(head, rows) {
  return h("table", {}, h("thead", {}, h("tr", {}, head.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((row) => h("tr", {}, row.map((c) => h("td", {}, c))))));
}

// ---------------------------------------------------------------- the episodes table
const COLS = [
  ["task", "task"], ["sample", "sample", 1], ["reward", "reward", 1], ["termination", "finish"],
  ["grade_status", "grade"], ["masked", "masked"], ["turns", "turns", 1], ["tokens", "tokens", 1],
  ["versions", "versions"], ["alpha_min", "alpha min", 1], ["alpha_max", "alpha max", 1],
  ["entropy_mean", "entropy", 1],
];
const tableState = { sort: null, dir: 1, filter: "" };
async function viewSet(r, id) {
  const run = await runData(r);
  const data = await setData(r, id);
  const pick = h("select", { onchange: (e) => (location.hash = `#/${r}/set/${e.target.value}`) },
    run.sets.map((s) => h("option", { value: s.id, selected: s.id === id }, `${s.label} (${s.episodes})`)));
  const search = h("input", { type: "search", placeholder: "filter: task, finish, grade, reward=1 …", value: tableState.filter });
  const body = h("tbody", {});
  const cell = (row, k) => {
    const v = row[k];
    if (k === "versions") return v ? (v[0] === v[1] ? String(v[0]) : `${v[0]}–${v[1]}`) : "–";
    if (k === "masked") return v === undefined ? "–" : v ? "masked" : "";
    return fmt(v);
  };
  const gids = data.group_ids;
  const render = () => {
    const terms = tableState.filter.toLowerCase().split(/\s+/).filter(Boolean);
    let rows = data.rows.filter((row) => terms.every((t) => {
      if (row.error) return true; // a bad line always shows
      const kv = t.match(/^(\w+)([=<>])(.+)$/);
      if (kv) {
        const v = row[kv[1]];
        const want = Number(kv[3]);
        if (kv[2] === "=") return String(v) === kv[3] || v === want;
        return kv[2] === "<" ? v < want : v > want;
      }
      return COLS.some(([k]) => cell(row, k).toLowerCase().includes(t));
    }));
    if (tableState.sort) {
      const k = tableState.sort;
      rows = rows.slice().sort((a, b) => {
        const x = a[k] ?? -Infinity, y = b[k] ?? -Infinity;
        return (x < y ? -1 : x > y ? 1 : 0) * tableState.dir;
      });
    }
    body.replaceChildren(...rows.map((row) => row.error
      ? h("tr", { class: "bad", "data-line": row.line }, h("td", { colspan: COLS.length }, `line ${row.line}: ${row.error}`))
      : h("tr", { class: "ep", "data-task": row.task, "data-sample": row.sample,
          onclick: () => (location.hash = `#/${r}/ep/${id}/${row.offset}`) },
        COLS.map(([k, , num]) => k === "task"
          ? h("td", {}, link(`#/${r}/group/${id}/${gids.indexOf(row.task)}`, row.task))
          : h("td", { class: num ? "num" : "", "data-col": k }, cell(row, k))))));
    count.textContent = `${rows.length} of ${data.rows.length} episodes`;
  };
  const count = h("span", { class: "muted", id: "count" });
  search.addEventListener("input", () => { tableState.filter = search.value; render(); });
  const head = h("tr", {}, COLS.map(([k, label, num]) => h("th", { class: num ? "num" : "", "data-col": k, onclick: () => {
    tableState.dir = tableState.sort === k ? -tableState.dir : 1; tableState.sort = k; render();
  } }, label)));
  render();
  const out = [h("h1", {}, "episodes"), h("p", {}, pick, " ", search, " ", count)];
  if (data.bad_lines.length) out.push(h("p", { class: "bad" }, data.bad_lines.join("; ")));
  out.push(h("table", { id: "episodes" }, h("thead", {}, head), body));
  return out;
}

// ---------------------------------------------------------------- a task's group
function rangeBanner(st, aem) {
  if (!st) return h("div", { class: "banner off" }, "no credit record for this step");
  const txt = `entropy range ${fmt(st.range, 4)} nats (${fmt(st.lo, 4)} – ${fmt(st.hi, 4)}, ${st.level} level) against AEM's floor min_range ${fmt(st.floor, 4)}`;
  return h("div", { class: "banner " + (st.active ? "on" : "off"), id: "range", "data-range": st.range, "data-floor": st.floor,
    "data-active": String(Boolean(st.active)) }, txt, ": ",
    h("b", {}, st.active ? "AEM active" : aem === false ? "AEM off" : "AEM inactive: range below min_range"),
    ` · alpha ${fmt(st.alpha_min)} – ${fmt(st.alpha_max)}`);
}
function bar(kind, value, scale, label) {
  const v = Number(value);
  if (kind === "adv") {
    const w = Math.min(50, (Math.abs(v) / (scale || 1)) * 50);
    return h("div", { class: "bar adv", title: label }, h("i", { class: v >= 0 ? "pos" : "neg",
      style: v >= 0 ? `left:50%;width:${w}%` : `left:${50 - w}%;width:${w}%` }));
  }
  return h("div", { class: "bar " + kind, title: label }, h("i", { style: `width:${Math.min(100, (v / (scale || 1)) * 100)}%` }));
}
async function viewGroup(r, id, g) {
  const run = await runData(r);
  const d = await groupData(r, id, g);
  const maxH = Math.max(1e-9, ...d.credit.map((c) => c.entropy));
  const maxA = Math.max(1e-9, ...d.credit.map((c) => c.alpha));
  const cards = d.members.map((e) => {
    const turns = d.credit.filter((c) => c.sample === e.sample).sort((a, b) => a.turn - b.turn);
    return h("div", { class: "card sample", "data-sample": e.sample },
      h("div", {}, link(`#/${r}/ep/${id}/${e.offset}`, `sample ${e.sample}`), " ",
        h("span", { class: "tag" + (e.reward === 1 ? " r1" : "") }, "reward " + fmt(e.reward)), " ",
        h("span", { class: "tag" }, e.termination), turns.some((t) => t.masked) ? h("span", { class: "tag masked" }, "masked") : ""),
      turns.map((t) => h("div", { class: "muted", "data-turn": t.turn, "data-alpha": String(t.alpha) },
        `turn ${t.turn}: H ${fmt(t.entropy, 4)} · alpha ${fmt(t.alpha)}`,
        bar("ent", t.entropy, maxH, "entropy"), bar("alpha", t.alpha, maxA, "alpha"))));
  });
  return [h("h1", {}, `group: ${d.task}`), h("p", { class: "muted" }, `${run.sets.find((s) => s.id === id)?.label} · ${d.members.length} samples`),
    rangeBanner(d.stats, run.aem.enabled), h("div", { class: "samples" }, cards)];
}

// ---------------------------------------------------------------- one episode
function splitThinking(text, tokens) {
  const i = text.lastIndexOf("</think>");
  if (!tokens || i < 0) return tokens ? [text, ""] : ["", text];
  return [text.slice(0, i + 8), text.slice(i + 8)];
}
function folded(text, label) {
  const lines = text.split("\n");
  if (text.length <= 1500 && lines.length <= 25) return h("pre", { class: "obs" }, text);
  return h("details", { class: "obs" }, h("summary", {}, `${label}: ${lines.length} lines, ${text.length} chars (${lines[0].slice(0, 80)}…)`),
    h("pre", {}, text));
}
function diffView(patch) {
  return h("pre", { class: "diff" }, patch.split("\n").map((l) => h("span", {
    class: l.startsWith("+") && !l.startsWith("+++") ? "add" : l.startsWith("-") && !l.startsWith("---") ? "del" : l.startsWith("@@") ? "hunk" : "",
  }, l + "\n")));
}
// a turn's token entropies (credit rows with token_entropy: run.record_token_entropy) as a
// heat strip on a canvas: one column per token (at most TOKEN_COLS, each then the mean of
// the tokens it covers), pale at the episode's lowest entropy to --ent at its highest
const TOKEN_COLS = 1500;
const HEAT = [[241, 243, 245], [232, 89, 12]];
const heat = (t) => HEAT[0].map((a, k) => Math.round(a + (HEAT[1][k] - a) * Math.min(1, Math.max(0, t))));
function tokenRange(rows) {
  let lo = Infinity, hi = -Infinity;
  for (const c of rows) for (const v of c.token_entropy || []) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}
function tokenStrip(values, lo, hi) {
  const n = values.length, cols = Math.max(1, Math.min(n, TOKEN_COLS));
  const c = h("canvas", { class: "tokens", width: cols, height: 1, "data-tokens": n,
    title: `${n} token entropies (hover for one)` });
  const ctx = c.getContext("2d"), img = ctx.createImageData(cols, 1);
  for (let x = 0; x < cols && n; x++) {
    const a = Math.floor((x * n) / cols), b = Math.max(a + 1, Math.floor(((x + 1) * n) / cols));
    let sum = 0;
    for (let i = a; i < b; i++) sum += values[i];
    img.data.set([...heat(hi > lo ? (sum / (b - a) - lo) / (hi - lo) : 0), 255], 4 * x);
  }
  ctx.putImageData(img, 0, 0);
  c.addEventListener("mousemove", (e) => {
    const i = Math.min(n - 1, Math.floor((e.offsetX / c.clientWidth) * n));
    c.title = `token ${i} of ${n}: entropy ${fmt(values[i], 4)} nats`;
  });
  return c;
}
function tokenLegend(lo, hi) {
  return h("div", { class: "muted", id: "token-legend", "data-lo": lo, "data-hi": hi }, "token entropy along each turn's response: ",
    h("span", { class: "swatch", style: `background:linear-gradient(to right,rgb(${heat(0)}),rgb(${heat(1)}))` }),
    ` ${fmt(lo, 4)} – ${fmt(hi, 4)} nats (a column a token, or the mean of a few; hover for a token's)`);
}
async function viewEpisode(r, id, off) {
  const run = await runData(r);
  const d = await epData(r, id, off);
  const ep = d.episode;
  const byTurn = Object.fromEntries(d.credit.map((c) => [c.turn, c]));
  const maxH = Math.max(1e-9, ...d.credit.map((c) => c.entropy));
  const maxA = Math.max(1e-9, ...d.credit.map((c) => c.alpha));
  const maxAdv = Math.max(1e-9, ...d.credit.flatMap((c) => [Math.abs(c.advantage), Math.abs(c.advantage_aem)]));
  const out = [h("h1", {}, `${ep.instance_id} · sample ${ep.sample_index}`)];
  out.push(h("p", {}, h("span", { class: "tag" + (ep.reward === 1 ? " r1" : "") }, "reward " + fmt(ep.reward)), " ",
    h("span", { class: "tag" }, ep.termination), " ", h("span", { class: "tag" }, `grade: ${ep.grade_status ?? "–"}`), " ",
    d.credit.some((c) => c.masked) ? h("span", { class: "tag masked" }, "masked out of the loss") : "",
    " ", h("span", { class: "muted" }, `${ep.turns.length} turns · ${fmt(ep.wall_s, 1)} s · ${ep.model || ""}`)));
  if (ep.grade_reason) out.push(h("p", { class: "muted" }, ep.grade_reason));
  if (ep.error) out.push(h("p", { class: "bad" }, ep.error));
  if (d.step !== null && d.step !== undefined) {
    const groups = (await setData(r, id)).group_ids;
    out.push(h("p", {}, link(`#/${r}/group/${id}/${groups.indexOf(ep.instance_id)}`, "the task's group"), " · ",
      link(`#/${r}/set/${id}`, "back to the table")));
    out.push(rangeBanner(d.group, run.aem.enabled));
  }
  if (d.credit.length)
    out.push(h("div", {}, h("span", { class: "muted" }, "AEM alpha along the episode (click a turn)"),
      h("div", { class: "strip", id: "strip" }, d.credit.map((c) => h("a", { href: `#turn-${c.turn}`, title: `turn ${c.turn}: alpha ${fmt(c.alpha)}`,
        style: `height:${Math.max(4, (c.alpha / maxA) * 100)}%`, onclick: (e) => { e.preventDefault(); document.getElementById(`turn-${c.turn}`)?.scrollIntoView(); } })))));
  const [tokLo, tokHi] = tokenRange(d.credit);
  if (tokHi >= tokLo) out.push(tokenLegend(tokLo, tokHi));  // only a record with token_entropy
  ep.turns.forEach((t, k) => {
    const c = byTurn[k];
    const [thinking, answer] = splitThinking(t.response_text || "", t.thinking_tokens);
    const side = h("div", { class: "side" }, h("b", {}, `turn ${k}`), h("div", { class: "muted" }, `${t.n_response} tokens · v${t.policy_version}`),
      c ? [h("div", {}, `entropy ${fmt(c.entropy, 4)}`), bar("ent", c.entropy, maxH, "mean token entropy"),
        h("div", { class: "alpha" }, `alpha ${fmt(c.alpha, 4)}`), bar("alpha", c.alpha, maxA, "AEM alpha"),
        h("div", {}, `advantage ${fmt(c.advantage, 4)}`), bar("adv", c.advantage, maxAdv, "before AEM"),
        h("div", {}, `after AEM ${fmt(c.advantage_aem, 4)}`), bar("adv", c.advantage_aem, maxAdv, "after AEM")]
        : h("div", { class: "muted" }, "no credit record"));
    const body = h("div", {}, c && c.token_entropy ? tokenStrip(c.token_entropy, tokLo, tokHi) : "",
      thinking ? h("details", { class: "thinking" }, h("summary", {}, `thinking (${t.thinking_tokens} tokens)`), h("pre", {}, thinking)) : "",
      h("pre", { class: "assistant" }, answer),
      t.tool_call ? h("div", { class: "call" }, h("span", { class: "tool" }, t.tool_call.name), " ",
        h("pre", {}, JSON.stringify(t.tool_call.arguments, null, 1))) : "",
      t.tool_error ? h("p", { class: "bad" }, "tool error: " + t.tool_error) : "",
      t.observation ? folded(t.observation, "observation" + (t.observation_truncated ? " (truncated)" : "")) : "");
    out.push(h("div", { class: "card turn", id: `turn-${k}`, "data-turn": k, "data-tool": t.tool_call ? t.tool_call.name : "",
      "data-alpha": c ? String(c.alpha) : "" }, side, body));
  });
  out.push(h("h2", {}, "final diff"), ep.patch ? diffView(ep.patch) : h("p", { class: "muted" }, "empty"));
  out.push(h("h2", {}, "grading per test"));
  if (ep.grade_tests)
    out.push(table(["kind", "test", "status"], Object.entries(ep.grade_tests).flatMap(([kind, tests]) =>
      Object.entries(tests).map(([name, st]) => [kind, name, h("span", { class: st === "pass" || /pass/i.test(st) ? "" : "bad" }, st)]))));
  else out.push(h("p", { class: "muted" }, "not recorded (an older record, or a grader without per-test results)"));
  return out;
}

// ---------------------------------------------------------------- two runs
// m.compare (swe_aem/commands/view.py): per task the share of runs that resolved it in A and
// in B, and `paired`, what `swe-aem compare` computes (swe_aem.eval.estimators.paired_compare)
function stat(name, label, value, text) {
  return h("tr", { "data-stat": name, "data-value": JSON.stringify(value) }, h("td", {}, label), h("td", { class: "num" }, text));
}
function episodesLink(r, setId, task, label) {  // the run's episode table, filtered to the task
  if (!setId) return "";
  return h("a", { href: `#/${r}/set/${setId}`, onclick: () => { tableState.filter = task; } }, label);
}
async function viewCompare() {
  const m = await manifest();
  if (m.runs.length < 2) return [h("p", {}, "one run only: give `swe-aem view RUN RUN_B`")];
  const [a, b] = [await runData(0), await runData(1)];
  const out = [h("h1", {}, `B: ${m.runs[1].name} vs A: ${m.runs[0].name}`)];
  const c = m.compare || {};
  if (c.file_a) out.push(h("p", { class: "muted" }, `A: ${c.file_a}`, h("br"), `B: ${c.file_b}`));
  if (c.paired) {
    const p = c.paired;
    const pct = (x) => `${(100 * x).toFixed(1)}%`;
    out.push(h("h2", {}, "paired statistics (swe-aem compare)"), h("table", { id: "paired", class: "kv" }, h("tbody", {},
      stat("n_instances", "instances (paired)", p.n_instances, p.n_instances),
      stat("runs", "runs of A / of B", [p.runs_a, p.runs_b], `${p.runs_a} / ${p.runs_b}`),
      stat("rate_a", "A resolve rate", p.rate_a, pct(p.rate_a)),
      stat("rate_b", "B resolve rate", p.rate_b, pct(p.rate_b)),
      stat("diff", "B − A", p.diff, (p.diff >= 0 ? "+" : "") + pct(p.diff)),
      stat("diff_ci", `${Math.round(100 * p.ci_level)}% CI (paired bootstrap over instances, ${p.n_boot} resamples, seed ${p.seed})`,
        p.diff_ci, `[${pct(p.diff_ci[0])}, ${pct(p.diff_ci[1])}]`),
      stat("mcnemar_p", `exact McNemar p (${p.wins.length} wins / ${p.losses.length} losses of B)`, p.mcnemar_p, fmt(p.mcnemar_p, 4)),
      stat("wins", "wins of B", p.wins, p.wins.join(", ") || "none"),
      stat("losses", "losses of B", p.losses, p.losses.join(", ") || "none"))));
  }
  if (c.tasks) {
    const wins = new Set((c.paired || {}).wins || []), losses = new Set((c.paired || {}).losses || []);
    const share = (x, runs) => x === null || x === undefined ? "–" : runs > 1 ? `${fmt(x, 2)} of ${runs} runs` : x ? "yes" : "no";
    out.push(h("h2", {}, `per task (${c.tasks.length})`), h("table", { id: "per-task" },
      h("thead", {}, h("tr", {}, ["task", "resolved in A", "resolved in B", "B vs A"].map((x) => h("th", {}, x)))),
      h("tbody", {}, c.tasks.map((t) => h("tr", { "data-task": t.task, "data-a": JSON.stringify(t.a), "data-b": JSON.stringify(t.b),
        class: wins.has(t.task) ? "win" : losses.has(t.task) ? "loss" : "" },
        h("td", {}, t.task), h("td", {}, share(t.a, c.runs_a), " ", episodesLink(0, c.set_a, t.task, "episodes")),
        h("td", {}, share(t.b, c.runs_b), " ", episodesLink(1, c.set_b, t.task, "episodes")),
        h("td", {}, wins.has(t.task) ? "B wins" : losses.has(t.task) ? "B loses" : ""))))));
  }
  if (c.error) out.push(h("p", { class: "bad", id: "compare-error" }, c.error));
  if (c.note) out.push(h("p", { class: "muted" }, c.note));
  if (a.kind === "train" && b.kind === "train")
    out.push(h("h2", {}, "curves (B dashed)"), curves([{ name: "A", metrics: a.metrics }, { name: "B", metrics: b.metrics, dash: true }]));
  return out;
}

// ---------------------------------------------------------------- router
let lastRendered = "";
async function route(fresh) {
  const parts = (location.hash || "#/0/run").replace(/^#\/?/, "").split("/");
  const main = mainEl();
  try {
    if (parts[0] === "compare") {
      await nav(0);
      main.replaceChildren(...(await viewCompare()));
      return;
    }
    const r = Number(parts[0]) || 0;
    await nav(r);
    let view;
    if (parts[1] === "set") view = await viewSet(r, parts[2]);
    else if (parts[1] === "group") view = await viewGroup(r, parts[2], Number(parts[3]));
    else if (parts[1] === "ep") view = await viewEpisode(r, parts[2], Number(parts[3]));
    else view = await viewRun(r);
    const y = window.scrollY;
    main.replaceChildren(...view);
    if (fresh) window.scrollTo(0, y);
    lastRendered = location.hash;
  } catch (err) {
    main.replaceChildren(h("div", { class: "card bad", id: "error" }, String(err.message || err)));
  }
}

window.addEventListener("hashchange", () => route(false));
route(false).then(async () => {
  const m = await manifest();
  if (!m.live) return;
  setInterval(async () => {  // a live run: fetch the chunks again, re-render when they changed
    const before = JSON.stringify(SWEAEM.data);
    const names = Object.keys(SWEAEM.data);
    for (const k of Object.keys(SWEAEM.data)) delete SWEAEM.data[k];
    try {
      await manifest(true);
      await Promise.all(names.filter((n) => n.includes("/")).map((n) => {
        const [r, rest] = [n.split("/")[0], n.split("/").slice(1).join("/")];
        return load(`data/${r}/${rest}.js`, n, true).catch(() => null);
      }));
    } catch (e) { return; }
    if (JSON.stringify(SWEAEM.data) !== before && lastRendered === location.hash && !document.activeElement?.matches("input")) route(true);
  }, 3000);
});
