// The front end of `thresher browse`: one page, routed by the URL's hash, drawn from the JSON API.
// Web text (captions, URLs, names) enters the page only through text nodes (`el` below): never as
// HTML, so a caption holding <script> or onerror= shows as the characters it is.
"use strict";

let INFO = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children.flat()) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

async function api(path) {
  const response = await fetch(path, {credentials: "same-origin"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function fmt(x) {
  if (x === null || x === undefined) return "—";
  if (typeof x === "number") return Number.isInteger(x) ? x.toLocaleString("en") : x.toPrecision(4);
  if (typeof x === "object") return JSON.stringify(x);
  return String(x);
}

function safeLink(url) {
  // only http(s) URLs become links (a javascript: URL from the web stays text)
  let ok = false;
  try { ok = ["http:", "https:"].includes(new URL(url).protocol); } catch (e) { ok = false; }
  return ok ? el("a", {href: url, rel: "noopener noreferrer nofollow", target: "_blank", class: "url"}, url)
            : el("span", {class: "url"}, url);
}

function sampleHref(r) { return `#/sample/${r.shard}/${encodeURIComponent(r.key)}`; }

function thumb(r, side) {
  if (r.status !== "success" || !INFO.has_images) {
    return el("div", {class: "nothumb"},
      el("div", {class: "why"}, r.status === "success" ? "no image in this pool (metadata only)" : `${r.status}: ${r.failure || ""}`),
      safeLink(r.url || ""));
  }
  return el("img", {src: `/img/${r.shard}/${encodeURIComponent(r.key)}?side=${side || 256}`, alt: r.caption || "",
                    loading: "lazy", width: side || 256, height: side || 256});
}

function tile(r, extra) {
  const badges = [];
  for (const s of INFO.scorers) if (r[`score:${s}`] !== null && r[`score:${s}`] !== undefined) badges.push(`${s} ${fmt(r[`score:${s}`])}`);
  if (r.dedup_reason) badges.push(`duplicate: ${r.dedup_reason}`);
  return el("figure", {class: "tile", "data-uid": r.uid, "data-shard": r.shard, "data-key": r.key},
    el("a", {href: sampleHref(r)}, thumb(r)),
    el("figcaption", {},
      el("div", {class: "caption", title: r.caption || ""}, r.caption || "(no caption)"),
      el("div", {class: "badges"}, badges.join(" · ")),
      extra || null));
}

// ---- the filter sidebar and the grid ---------------------------------------------------------------

function params() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

function go(route, p) {
  const clean = new URLSearchParams();
  for (const [k, v] of p) if (v !== "" && v !== null) clean.set(k, v);
  const q = clean.toString();
  location.hash = route + (q ? "?" + q : "");
}

function select(name, options, value, onchange) {
  return el("select", {name, onchange},
    options.map(([v, label]) => el("option", {value: v, selected: v === value ? "selected" : null}, label)));
}

function filterPanel(p) {
  const set = (k) => (e) => { p.set(k, e.target.value); p.delete("offset"); go("#/samples", p); };
  const recipe = p.get("recipe") || "";
  const r = INFO.recipes.find((x) => x.name === recipe);
  const parts = [el("h3", {}, "Filters")];
  parts.push(el("label", {}, "recipe ", select("recipe", [["", "(any)"], ...INFO.recipes.map((x) => [x.name, x.name])], recipe,
    (e) => { p.set("recipe", e.target.value); p.delete("state"); p.delete("offset"); go("#/samples", p); })));
  if (r) {
    const states = [["any", "all"], ["kept", "kept"], ["dropped", "dropped"], ...r.steps.map((s) => [`dropped:${s.name}`, `dropped by ${s.name}`])];
    parts.push(el("label", {}, "decision ", select("state", states, p.get("state") || "any", set("state"))));
    parts.push(funnel(r));
  }
  for (const s of INFO.scorers) {
    parts.push(el("label", {class: "range"}, `${s} score `,
      el("input", {type: "number", step: "any", name: `min:score:${s}`, value: p.get(`min:score:${s}`) || "", placeholder: "min", onchange: set(`min:score:${s}`)}),
      el("input", {type: "number", step: "any", name: `max:score:${s}`, value: p.get(`max:score:${s}`) || "", placeholder: "max", onchange: set(`max:score:${s}`)})));
  }
  if (INFO.languages.length) {
    parts.push(el("label", {}, "language ", select("lang", [["", "(any)"], ...INFO.languages.map(([l, n]) => [l, `${l} (${fmt(n)})`])], p.get("lang") || "", set("lang"))));
  }
  parts.push(el("label", {}, "download ", select("status", [["", "(any)"], ...INFO.status.map(([s, n]) => [s, `${s} (${fmt(n)})`])], p.get("status") || "", set("status"))));
  if (INFO.failures.length) {
    parts.push(el("label", {}, "failure ", select("failure", [["", "(any)"], ...INFO.failures.map(([s, n]) => [s, `${s} (${fmt(n)})`])], p.get("failure") || "", set("failure"))));
  }
  if (INFO.dedup) {
    const opts = [["", "(any)"], ["kept", "kept by dedup"], ["dropped", "dropped by dedup"], ...INFO.dedup.map(([s, n]) => [s, `${s} duplicate (${fmt(n)})`])];
    parts.push(el("label", {}, "dedup ", select("dedup", opts, p.get("dedup") || "", set("dedup"))));
  }
  if (INFO.subsets.length) {
    const opts = [["", "(any)"], ...INFO.subsets.flatMap((s) => [[s.name, `in ${s.name}`], [`!${s.name}`, `not in ${s.name}`]])];
    parts.push(el("label", {}, "subset ", select("subset", opts, p.get("subset") || "", set("subset"))));
  }
  parts.push(el("label", {}, "caption contains ", el("input", {type: "search", name: "q", value: p.get("q") || "", onchange: set("q")})));
  const sorts = [["", "pool order"], ...INFO.scorers.flatMap((s) => [[`score:${s}:desc`, `${s} score, high first`], [`score:${s}:asc`, `${s} score, low first`]])];
  parts.push(el("label", {}, "sort ", select("sort", sorts, p.get("sort") || "", set("sort"))));
  parts.push(el("p", {}, el("a", {href: "#/samples"}, "clear filters")));
  return parts;
}

function funnel(r) {
  // the recipe's funnel (its decisions manifest): each step links to the samples it dropped, and to its threshold
  const rows = r.funnel.map((f) => {
    const dropped = new URLSearchParams({recipe: r.name, state: `dropped:${f.step}`});
    return el("tr", {},
      el("td", {}, el("a", {href: `#/samples?${dropped}`, class: "step", title: `samples ${f.step} dropped`}, f.step)),
      el("td", {}, fmt(f.in)), el("td", {}, fmt(f.dropped)),
      el("td", {}, r.scored.includes(f.step)
        ? el("a", {href: `#/threshold/${encodeURIComponent(r.name)}/${encodeURIComponent(f.step)}`, title: "scores near the threshold"}, "threshold")
        : ""));
  });
  const kept = new URLSearchParams({recipe: r.name, state: "kept"});
  const last = r.funnel.length ? r.funnel[r.funnel.length - 1].out : null;
  return el("table", {class: "funnel"},
    el("tr", {}, el("th", {}, "step"), el("th", {}, "in"), el("th", {}, "dropped"), el("th", {}, "")), rows,
    el("tr", {}, el("td", {}, el("a", {href: `#/samples?${kept}`}, "kept")), el("td", {}, fmt(last)), el("td", {}), el("td", {})));
}

async function samplesView() {
  const p = params();
  document.getElementById("filters").replaceChildren(...filterPanel(p));
  const main = document.getElementById("main");
  const offset = Number(p.get("offset") || 0);
  const page = await api(`/api/samples?${p}&limit=60`);
  const nav = el("div", {class: "pager"},
    el("span", {id: "total"}, `${fmt(page.total)} samples`),
    offset > 0 ? el("a", {href: "#", onclick: (e) => { e.preventDefault(); p.set("offset", Math.max(0, offset - 60)); go("#/samples", p); }}, "‹ previous") : null,
    page.total > 0 ? el("span", {}, ` ${fmt(offset + 1)}–${fmt(offset + page.rows.length)} `) : null,
    offset + 60 < page.total ? el("a", {href: "#", onclick: (e) => { e.preventDefault(); p.set("offset", offset + 60); go("#/samples", p); }}, "next ›") : null);
  main.replaceChildren(nav, el("div", {class: "grid", id: "grid"}, page.rows.map((r) => tile(r))));
}

// ---- near the threshold ------------------------------------------------------------------------------

function histogram(t) {
  const W = 760, H = 220, L = 50, B = 30;
  const n = t.kept.length, x0 = t.edges[0], x1 = t.edges[n];
  const top = Math.max(1, ...t.kept.map((k, i) => k + t.dropped_hist[i]));
  const sx = (x) => L + ((x - x0) / ((x1 - x0) || 1)) * (W - L - 10);
  const sy = (y) => H - B - (y / top) * (H - B - 10);
  const bars = [];
  for (let i = 0; i < n; i++) {
    const a = sx(t.edges[i]), w = Math.max(1, sx(t.edges[i + 1]) - a - 1);
    bars.push(svg("rect", {x: a, y: sy(t.dropped_hist[i]), width: w, height: H - B - sy(t.dropped_hist[i]), class: "dropped"}));
    bars.push(svg("rect", {x: a, y: sy(t.kept[i] + t.dropped_hist[i]), width: w, height: sy(t.dropped_hist[i]) - sy(t.kept[i] + t.dropped_hist[i]), class: "kept"}));
  }
  const parts = [svg("line", {x1: L, y1: H - B, x2: W - 10, y2: H - B, class: "axis"}),
    svg("text", {x: L, y: H - 8}, fmt(x0)), svg("text", {x: W - 60, y: H - 8}, fmt(x1)),
    svg("text", {x: 4, y: 16}, fmt(top)), ...bars];
  if (t.threshold !== null && t.threshold !== undefined) {
    const x = sx(t.threshold);
    parts.push(svg("line", {x1: x, y1: 4, x2: x, y2: H - B, class: "threshold"}));
    const right = x > W - 140;  // the label on the side with room
    parts.push(svg("text", {x: right ? x - 4 : x + 4, y: 14, class: "threshold-label", "text-anchor": right ? "end" : "start"}, `threshold ${fmt(t.threshold)}`));
  }
  return svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "histogram", role: "img"}, ...parts);
}

async function thresholdView(recipe, step) {
  const t = await api(`/api/threshold/${encodeURIComponent(recipe)}/${encodeURIComponent(step)}`);
  document.getElementById("filters").replaceChildren(...filterPanel(new URLSearchParams({recipe})));
  const score = (x) => el("div", {class: "score"}, `score ${fmt(x[`step:${recipe}:${step}`])}`);
  const rule = t.threshold_source === "top_fraction"
    ? `keeps the top ${fmt(t.rule.fraction * 100)}% of ${t.rule.of} (${fmt(t.rule.ranked)} ranked); threshold ${fmt(t.threshold)}`
    : t.threshold !== null ? `threshold ${fmt(t.threshold)} (${t.threshold_source})` : `rule: ${fmt(t.rule)}`;
  document.getElementById("main").replaceChildren(
    el("h2", {}, `${recipe}: step ${step} (${t.step.filter})`),
    el("p", {}, `${fmt(t.reached)} samples reached this step; it dropped ${fmt(t.dropped)}. ${rule}. `,
      el("span", {class: "legend kept"}, "kept"), " ", el("span", {class: "legend dropped"}, "dropped")),
    t.edges ? histogram(t) : el("p", {}, "This step gives no scores."),
    t.clipped && (t.clipped.below || t.clipped.above)
      ? el("p", {class: "note"}, `The histogram shows the central 98% of the scores: ${fmt(t.clipped.below)} lower and ${fmt(t.clipped.above)} higher are counted in its end bins.`)
      : null,
    el("h3", {}, `Just above the threshold (kept, lowest scores first)`),
    el("div", {class: "grid", id: "above"}, t.above.map((x) => tile(x, score(x)))),
    el("h3", {}, `Just below the threshold (dropped by ${step}, highest scores first)`),
    el("div", {class: "grid", id: "below"}, t.below.map((x) => tile(x, score(x)))));
}

// ---- one sample ----------------------------------------------------------------------------------------

function table(rows, cls) {
  return el("table", {class: cls || "kv"}, rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v instanceof Node ? v : fmt(v)))));
}

function stepLink(recipe, step) {
  // a scoring step opens its threshold view; any other, the samples it dropped
  const r = INFO.recipes.find((x) => x.name === recipe);
  const href = r && r.scored.includes(step)
    ? `#/threshold/${encodeURIComponent(recipe)}/${encodeURIComponent(step)}`
    : `#/samples?${new URLSearchParams({recipe, state: `dropped:${step}`})}`;
  return el("a", {href}, step);
}

async function sampleView(shard, key) {
  const s = await api(`/api/sample/${shard}/${encodeURIComponent(key)}`);
  const r = s.row, x = s.explain;
  const parts = [el("h2", {}, `Sample ${r.uid}`)];
  const image = r.status === "success" && INFO.has_images
    ? el("img", {src: `/img/${r.shard}/${encodeURIComponent(r.key)}?side=512`, alt: r.caption || "", class: "big"})
    : thumb(r, 512);
  parts.push(el("div", {class: "sample"}, image, el("div", {},
    el("p", {class: "caption-full"}, r.caption || "(no caption)"),
    table([["URL", safeLink(r.url || "")], ["uid", r.uid], ["pool shard", String(r.shard).padStart(8, "0")], ["key", r.key],
           ["download", x.download.status + (x.download.failure ? `: ${x.download.failure}` : "")],
           ...(x.download.error ? [["error", x.download.error]] : []), ...(x.verdict ? [["verdict", x.verdict]] : [])]))));
  if (INFO.searchable.length && r.status === "success") {
    parts.push(el("p", {}, "More like this: ", INFO.searchable.map((sc) =>
      el("a", {href: `#/search?scorer=${encodeURIComponent(sc)}&shard=${r.shard}&key=${encodeURIComponent(r.key)}`, class: "button"}, sc))));
  }
  for (const [name, rec] of Object.entries(x.recipes || {})) {
    parts.push(el("h3", {}, `Recipe ${name}: ${rec.verdict}`));
    parts.push(el("table", {class: "steps"}, el("tr", {}, ["step", "filter", "score", "decision", "rule"].map((h) => el("th", {}, h))),
      rec.steps.map((st) => el("tr", {class: st.decision},
        el("td", {}, stepLink(name, st.step)),
        el("td", {}, st.filter), el("td", {}, fmt(st.score)), el("td", {}, st.decision), el("td", {}, st.rule)))));
  }
  if (x.dedup) {
    parts.push(el("h3", {}, `Dedup: ${x.dedup.keep ? "kept" : `dropped: ${x.dedup.reason} duplicate`}`));
    if (s.duplicates.length) {
      parts.push(el("p", {}, `Its duplicate group (${s.duplicates.length + 1} samples; the group keeps ${x.dedup.group}):`));
      parts.push(el("div", {class: "grid duplicates", id: "duplicates"}, tile(r, el("div", {class: "score"}, "this sample")),
        s.duplicates.map((d) => tile(d, el("div", {class: "score"}, d.dedup_reason ? `${d.dedup_reason} duplicate` : "kept by dedup")))));
    } else if (x.dedup.group && x.dedup.group.startsWith("eval:")) {
      parts.push(el("p", {}, `A copy of evaluation image ${x.dedup.group.slice(5)} (contamination).`));
    }
  }
  const src = s.source || {};
  const input = src.input || {};
  parts.push(el("h3", {}, "Where it came from"), table([
    ["pool input", input.path || input.folder || input.kind || fmt(input)],
    ...(input.sha256 ? [["input sha256", input.sha256]] : []),
    ["pool shard finished", src.shard_finished ? new Date(src.shard_finished * 1000).toISOString() : null],
    ...(src.tar ? [["shard tar", src.tar]] : [])]));
  if (Object.keys(s.features).length) parts.push(el("h3", {}, "Features"), table(Object.entries(s.features)));
  const scores = INFO.scorers.map((sc) => [sc, r[`score:${sc}`]]);
  if (scores.length) parts.push(el("h3", {}, "Scores"), table(scores));
  if (INFO.subsets.length) {
    parts.push(el("h3", {}, "Subsets"), table(INFO.subsets.map((sub) => [sub.name,
      s.subsets[sub.name] ? s.subsets[sub.name].map((l) => `shard ${l.subset_shard} key ${l.subset_key}` + (l.copy ? ` (copy ${l.copy})` : "")).join("; ") : "not in it"])));
  }
  document.getElementById("main").replaceChildren(...parts);
}

// ---- search ------------------------------------------------------------------------------------------

async function searchView() {
  const p = params();
  const scorer = p.get("scorer") || INFO.searchable[0] || "";
  const form = el("form", {class: "search", onsubmit: (e) => {
    e.preventDefault();
    go("#/search", new URLSearchParams({scorer: e.target.scorer.value, q: e.target.q.value}));
  }}, select("scorer", INFO.searchable.map((s) => [s, s]), scorer, null),
     el("input", {type: "search", name: "q", value: p.get("q") || "", placeholder: "describe an image", size: 40}),
     el("button", {type: "submit"}, "Search"));
  const main = document.getElementById("main");
  main.replaceChildren(el("h2", {}, "Search the pool's images"), form);
  if (!INFO.searchable.length) { main.appendChild(el("p", {}, "No scorer of this pool stored image embeddings.")); return; }
  if (!p.get("q") && !p.get("key")) return;
  const query = p.get("q") ? `q=${encodeURIComponent(p.get("q"))}` : `shard=${p.get("shard")}&key=${encodeURIComponent(p.get("key"))}`;
  main.appendChild(el("p", {id: "searching"}, "Searching…"));
  const res = await api(`/api/search?scorer=${encodeURIComponent(scorer)}&${query}&k=48`);
  document.getElementById("searching").replaceWith(
    el("p", {}, `${res.rows.length} nearest by ${res.scorer} (${res.index}) to ${res.query.text !== undefined ? `“${res.query.text}”` : `sample ${res.query.key}`}`),
    el("div", {class: "grid", id: "results"}, res.rows.map((x) => tile(x, el("div", {class: "score"}, `similarity ${fmt(x.similarity)}`)))));
}

// ---- routing -------------------------------------------------------------------------------------------

async function route() {
  const path = location.hash.split("?")[0].replace(/^#/, "") || "/samples";
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const main = document.getElementById("main");
  delete document.body.dataset.ready;
  try {
    if (!INFO) {
      INFO = await api("/api/info");
      document.getElementById("pool").textContent = `${INFO.pool} · ${fmt(INFO.rows)} samples`;
    }
    if (parts[0] === "sample" && parts.length === 3) await sampleView(parts[1], parts[2]);
    else if (parts[0] === "threshold" && parts.length === 3) await thresholdView(parts[1], parts[2]);
    else if (parts[0] === "search") { document.getElementById("filters").replaceChildren(); await searchView(); }
    else await samplesView();
  } catch (err) {
    main.replaceChildren(el("p", {class: "error"}, `Error: ${err.message}`));
  }
  document.body.dataset.ready = location.hash || "#";  // drawn: what tests and screenshots wait for
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", route);
