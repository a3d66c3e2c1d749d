// kvgit's operators' page: polls /api/v1/overview and draws the overview, an area or a key.
// Everything that comes from data is set with textContent (keys and values are arbitrary
// bytes); never parsed as HTML, no framework, nothing loaded from elsewhere.
"use strict";

const POLL_MS = 3000;
const POLL_HIDDEN_MS = 15000;
const LIST_MAX = 200;

// ---- small DOM helpers -------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

const $ = (id) => document.getElementById(id);

function shortId(id) {
  return id ? String(id).slice(0, 10) : "—";
}

function pad(n) {
  return String(n).padStart(2, "0");
}

function fmtTime(unix) {
  if (unix === null || unix === undefined) return "—";
  const d = new Date(unix * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, seconds);
  if (s < 1) return "0s";
  if (s < 90) return `${Math.round(s)}s`;
  if (s < 5400) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

function fmtSize(n) {
  if (n === null || n === undefined) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function b64FromText(text) {
  const bytes = new TextEncoder().encode(text);
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

function areaHref(name) {
  return "/areas/" + encodeURIComponent(name);
}

function keyHref(area, keyB64) {
  return "/key?area=" + encodeURIComponent(area) + "&key_b64=" + encodeURIComponent(keyB64);
}

function commitCell(brief, id) {
  if (!brief && !id) return "—";
  const c = brief || { id: id };
  return el("span", { class: "commit" },
    el("code", { title: c.id }, shortId(c.id)),
    c.time !== undefined ? el("span", { class: "muted" }, " " + fmtTime(c.time)) : null,
    c.summary ? el("span", { class: "summary" }, " " + c.summary) : null);
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { ok: response.ok, status: response.status, body: body };
}

// ---- what the page is showing --------------------------------------------------------------

function route() {
  const path = location.pathname;
  const q = new URLSearchParams(location.search);
  if (path.startsWith("/areas/")) {
    return { view: "area", area: decodeURIComponent(path.slice("/areas/".length)) };
  }
  if (path === "/key") {
    return { view: "key", area: q.get("area") || "", keyB64: q.get("key_b64") || "" };
  }
  return { view: "overview" };
}

const page = {
  route: route(),
  doc: null,
  built: false,
  // gitMark() of the area when its commits / key history were last read.
  commitsFor: undefined,
  historyFor: undefined,
};

// What moves when the area's history in Git grows: a commit of ours (last_commit) or an
// applied one of someone else's (the checkpoint's base commit). Git is reread only then.
function gitMark(a) {
  return `${a.last_commit || ""}|${a.base_commit || ""}`;
}

function findArea(name) {
  return ((page.doc && page.doc.areas) || []).find((a) => a.area === name);
}

// ---- problems of an area, as short lines -----------------------------------------------------

function problems(a) {
  const out = [];
  if (a.refused) out.push(["bad", "apply refused (mass delete): " + a.refused]);
  if (a.held) out.push(["bad", "commit held back (mass delete): " + a.held]);
  if (a.blocked) out.push(["warn", a.blocked]);
  if (a.last_error && !(a.blocked || "").includes(a.last_error)) out.push(["bad", "error: " + a.last_error]);
  if (a.apply_error && !(a.blocked || "").includes(a.apply_error)) out.push(["bad", "apply error: " + a.apply_error]);
  if (a.unmapped_files && a.unmapped_files.length) out.push(["warn", `${a.unmapped_files.length} file(s) map to no key`]);
  if (a.last_resync) out.push(["muted", `resynced ${a.resyncs}×, last: ${a.last_resync}`]);
  return out;
}

function checkpointText(a, doc) {
  const cp = a.checkpoint ? a.checkpoint.revision : null;
  const rev = doc.backend ? doc.backend.revision : null;
  if (cp === null || cp === undefined) return "none yet";
  if (rev === null || rev === undefined) return String(cp);
  const behind = rev - cp;
  return behind > 0 ? `${cp} / ${rev} (−${behind})` : `${cp} / ${rev}`;
}

function ownerText(a, doc) {
  if (!a.owner) return a.owned_here ? doc.node + " (here)" : "—";
  return a.owned_here ? a.owner + " (here)" : a.owner;
}

// ---- header and service state ----------------------------------------------------------------

function badge(kind, text) {
  return el("span", { class: "badge " + kind }, text);
}

function renderHeader(doc) {
  clear($("node"), `${doc.node} · ${doc.branch} · v${doc.version}`);
  clear($("health"),
    badge(doc.ready ? "ok" : "bad", doc.ready ? "ready" : "not ready"),
    badge(doc.backend_ok ? "ok" : "bad", `${doc.backend.kind} ${doc.backend_ok ? "up" : "down"}`));
  const push = doc.push || {};
  const fetch = doc.fetch || {};
  const remote = doc.ui && doc.ui.remote;
  const rows = [
    ["Backend", `${doc.backend.kind}, revision ${doc.backend.revision ?? "—"}` + (doc.backend_error ? ` — ${doc.backend_error}` : ""), doc.backend_ok ? "" : "bad"],
    ["Push", !remote ? "no remote configured" :
      (push.last_success ? `last success ${fmtAge(doc.now - push.last_success)} ago` : "no push yet") +
      (doc.push_error ? ` — ${doc.push_error}` : ""), doc.push_error ? "bad" : ""],
    ["Fetch", !remote ? "no remote configured" : `${fetch.ok} ok, ${fetch.error} failed` + (doc.sync_error ? ` — ${doc.sync_error}` : ""), doc.sync_error ? "bad" : ""],
  ];
  if (doc.git_lock) rows.push(["Git lock", doc.git_lock, "warn"]);
  clear($("service"), el("dl", { class: "facts" },
    rows.map(([k, v, cls]) => [el("dt", {}, k), el("dd", { class: cls || null }, v)])));
}

// ---- overview -------------------------------------------------------------------------------

const OVERVIEW_COLUMNS = ["Area", "Mode", "Owner", "Checkpoint / backend", "Lag", "Last commit",
  "Pending", "Unpushed", "Drift", "Conflicts", "State"];

// Short values that read badly when broken (modes, revisions, counts, "in sync").
const NOWRAP_COLUMNS = new Set([1, 3, 4, 6, 7, 8, 9, 10]);

function renderOverview(doc) {
  const rows = doc.areas.map((a) => {
    const issues = problems(a);
    const state = issues.length
      ? el("ul", { class: "issues" }, issues.map(([cls, text]) => el("li", { class: cls }, text)))
      : el("span", { class: "ok" }, a.ready ? "in sync" : "starting");
    const cells = [
      el("a", { href: areaHref(a.area) }, a.area),
      a.mode,
      ownerText(a, doc),
      checkpointText(a, doc),
      fmtAge(a.lag_seconds),
      commitCell(a.last_commit_info, a.last_commit),
      a.pending_events ?? "—",
      a.unpushed ?? "—",
      a.drift ?? "—",
      (a.last_conflicts || []).length,
      state,
    ];
    return el("tr", { "data-area": a.area, class: issues.some(([c]) => c === "bad") ? "row-bad" : null },
      cells.map((c, i) => el(i === 0 ? "th" : "td", {
        "data-label": OVERVIEW_COLUMNS[i],
        scope: i === 0 ? "row" : null,
        class: NOWRAP_COLUMNS.has(i) ? "nowrap" : null,
      }, c)));
  });
  clear($("view"),
    el("h1", {}, `Areas (${doc.areas.length})`),
    el("table", { class: "cards", id: "areas" },
      el("thead", {}, el("tr", {}, OVERVIEW_COLUMNS.map((c) => el("th", { scope: "col" }, c)))),
      el("tbody", {}, rows)));
  clear($("crumbs"));
}

// ---- one area -------------------------------------------------------------------------------

function buildArea(name) {
  const keyInput = el("input", { id: "key-input", type: "text", spellcheck: "false", autocomplete: "off", placeholder: "whole key" });
  const form = el("form", { id: "key-form", class: "inline" },
    el("label", { for: "key-input" }, "Key"), keyInput, el("button", { type: "submit" }, "History"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    location.href = keyHref(name, b64FromText(keyInput.value));
  });
  const planButton = el("button", { id: "plan-refresh", type: "button" }, "Recompute");
  planButton.addEventListener("click", () => loadPlan(name));
  clear($("view"),
    el("h1", {}, "Area ", el("span", { class: "name" }, name)),
    el("div", { id: "area-facts" }),
    el("h2", {}, "Recent commits"),
    el("div", { id: "area-commits" }, el("p", { class: "muted" }, "Loading…")),
    el("h2", {}, "Plan: what an apply would change ", planButton),
    el("div", { id: "area-plan" }, el("p", { class: "muted" }, "Loading…")),
    el("h2", {}, "Key history"),
    form);
  clear($("crumbs"), el("a", { href: "/" }, "Areas"), " / ", name);
  loadPlan(name);
}

function renderArea(doc, name) {
  const a = findArea(name);
  if (!a) {
    clear($("view"), el("p", { class: "bad" }, "No area named ", el("code", {}, name), " in this node's config."));
    page.built = false;
    return;
  }
  if (!page.built) {
    buildArea(name);
    page.built = true;
    const input = $("key-input");
    if (input && !input.value) input.value = a.prefix;
  }
  const facts = [
    ["Mode", a.mode],
    ["Prefix", a.prefix],
    ["Directory", a.path || "(repository root)"],
    ["Owner", ownerText(a, doc)],
    ["Checkpoint / backend revision", checkpointText(a, doc)],
    ["Base commit", a.base_commit ? el("code", {}, a.base_commit) : "—"],
    ["Lag", fmtAge(a.lag_seconds)],
    ["Last commit", commitCell(a.last_commit_info, a.last_commit)],
    ["Pending events", a.pending_events ?? "—"],
    ["Unpushed commits", a.unpushed ?? "—"],
    ["Drift (keys differing from Git)", a.drift ?? "—"],
    ["State", a.ready ? "in sync" : (a.caught_up ? "caught up, first apply pending" : "starting")],
  ];
  const issues = problems(a);
  const conflicts = a.last_conflicts || [];
  clear($("area-facts"),
    el("dl", { class: "facts" }, facts.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])),
    issues.length ? el("ul", { class: "issues" }, issues.map(([cls, text]) => el("li", { class: cls }, text))) : null,
    conflicts.length ? [
      el("h3", {}, `Conflicts: live values Git overwrote (${conflicts.length})`),
      el("table", { class: "cards" },
        el("thead", {}, el("tr", {}, el("th", {}, "Key"), el("th", {}, "Overwritten value"))),
        el("tbody", {}, conflicts.map((c) => el("tr", {},
          el("td", { "data-label": "Key" }, el("a", { href: keyHref(name, c.key_b64) }, c.key)),
          el("td", { "data-label": "Overwritten value" },
            c.overwritten === null || c.overwritten === undefined
              ? el("span", { class: "muted" }, "hidden (server.ui_show_values = false)")
              : el("pre", {}, c.overwritten)))))),
    ] : null,
    (a.unmapped_files || []).length ? [
      el("h3", {}, "Files that map to no key"),
      el("ul", {}, a.unmapped_files.slice(0, LIST_MAX).map((f) => el("li", {}, el("code", {}, f)))),
    ] : null);
  if (page.commitsFor !== gitMark(a)) {
    page.commitsFor = gitMark(a);
    loadCommits(name);
  }
}

async function loadCommits(name) {
  const box = $("area-commits");
  try {
    const r = await getJSON("/api/v1/areas/" + encodeURIComponent(name) + "/commits?limit=20");
    if (!r.ok) {
      clear(box, el("p", { class: "bad" }, (r.body && r.body.error) || `HTTP ${r.status}`));
      return;
    }
    const commits = r.body.commits;
    if (!commits.length) {
      clear(box, el("p", { class: "muted" }, "No commit touched this area yet."));
      return;
    }
    clear(box, el("table", { class: "cards", id: "commits" },
      el("thead", {}, el("tr", {}, ["Commit", "Time", "Author", "Summary"].map((c) => el("th", {}, c)))),
      el("tbody", {}, commits.map((c) => el("tr", {},
        el("td", { "data-label": "Commit" }, el("code", { title: c.id }, shortId(c.id))),
        el("td", { "data-label": "Time" }, fmtTime(c.time)),
        el("td", { "data-label": "Author" }, c.author_name),
        el("td", { "data-label": "Summary", class: "summary" }, c.summary))))));
  } catch (e) {
    clear(box, el("p", { class: "bad" }, "Cannot read the commits: " + e));
  }
}

const PLAN_KINDS = [["adds", "Keys to add"], ["changes", "Keys to change"], ["deletes", "Keys to delete"],
  ["conflicts", "Conflicts: live values Git would overwrite"], ["drift", "Drift: live values that differ from Git"]];

async function loadPlan(name) {
  const box = $("area-plan");
  clear(box, el("p", { class: "muted" }, "Computing the plan (reads the area's keys)…"));
  let r;
  try {
    r = await getJSON("/api/v1/plan?area=" + encodeURIComponent(name));
  } catch (e) {
    clear(box, el("p", { class: "bad" }, "Cannot read the plan: " + e));
    return;
  }
  if (r.status === 404 && !(r.body && r.body.error)) {
    clear(box, el("p", { class: "muted" }, "This build of kvgit serves no plan (GET /api/v1/plan)."));
    return;
  }
  if (!r.ok) {
    clear(box, el("p", { class: "bad" }, (r.body && r.body.error) || `HTTP ${r.status}`));
    return;
  }
  const body = r.body || {};
  const plan = Array.isArray(body.areas) ? (body.areas.find((p) => p.area === name) || {}) : body;
  const parts = [];
  let total = 0;
  for (const [kind, label] of PLAN_KINDS) {
    const items = Array.isArray(plan[kind]) ? plan[kind] : [];
    total += items.length;
    if (!items.length) continue;
    parts.push(el("h3", {}, `${label} (${items.length})`));
    parts.push(el("ul", { class: "keys plan-" + kind }, items.slice(0, LIST_MAX).map((it) => {
      const key = typeof it === "string" ? it : (it.key ?? ("(not UTF-8) base64 " + it.key_b64));
      const link = it && it.key_b64 ? el("a", { href: keyHref(name, it.key_b64) }, key) : key;
      return el("li", {}, link, it && it.path && it.path !== key ? el("span", { class: "muted" }, " → " + it.path) : null);
    })));
    if (items.length > LIST_MAX) parts.push(el("p", { class: "muted" }, `…and ${items.length - LIST_MAX} more`));
  }
  for (const field of ["error", "refused", "blocked"]) {
    if (typeof plan[field] === "string" && plan[field]) parts.unshift(el("p", { class: "bad" }, plan[field]));
  }
  if (plan.pending_export) parts.push(el("p", { class: "muted" }, `${plan.pending_export} key(s) newer in the KV store go to Git by export.`));
  if (!total) parts.unshift(el("p", { class: "ok", id: "plan-empty" }, "Nothing to apply: the keys match Git."));
  clear(box, parts);
}

// ---- one key --------------------------------------------------------------------------------

function lineDiff(older, newer) {
  const a = older.split("\n");
  const b = newer.split("\n");
  if (a.length * b.length > 4000000) return null;
  const n = a.length;
  const m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([" ", a[i]]); i++; j++; }
    else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(["+", b[j]]); j++; }
    else { out.push(["-", a[i]]); i++; }
  }
  return out;
}

function valueView(value) {
  if (!value) return el("span", { class: "muted" }, "deleted");
  if (value.text === null || value.text === undefined) {
    return el("div", {}, el("span", { class: "muted" }, `binary, ${fmtSize(value.size)} (base64):`), el("pre", {}, value.b64));
  }
  return el("pre", {}, value.text + (value.truncated ? "\n… (cut)" : ""));
}

function diffView(older, newer) {
  const before = older && older.text !== undefined && older.text !== null ? older.text : "";
  const after = newer && newer.text !== undefined && newer.text !== null ? newer.text : "";
  if ((older && older.text === null) || (newer && newer.text === null)) return null;
  const lines = lineDiff(before, after);
  if (!lines) return el("p", { class: "muted" }, "too large to diff");
  return el("pre", { class: "diff" }, lines.filter(([op]) => op !== " " || lines.length < 40)
    .map(([op, text]) => el("span", { class: op === "+" ? "add" : op === "-" ? "del" : null }, op + " " + text + "\n")));
}

async function loadHistory() {
  const { area, keyB64 } = page.route;
  const box = $("key-history");
  try {
    const r = await getJSON("/api/v1/key?area=" + encodeURIComponent(area) + "&key_b64=" + encodeURIComponent(keyB64));
    if (!r.ok) {
      clear(box, el("p", { class: "bad" }, (r.body && r.body.error) || `HTTP ${r.status}`));
      return;
    }
    const h = r.body;
    clear($("key-name"), h.key);
    const entries = h.entries;
    const note = h.show_values ? null
      : el("p", { class: "muted", id: "values-hidden" }, "Values are not shown (server.ui_show_values = false): values may be secrets.");
    if (!entries.length) {
      clear(box, note, el("p", { class: "muted" }, "No commit recorded this key."));
      return;
    }
    clear(box, note, el("table", { class: "cards", id: "history" },
      el("thead", {}, el("tr", {}, ["Commit", "Time", "Author", "Summary", "Size"].concat(h.show_values ? ["Value", "Change"] : []).map((c) => el("th", {}, c)))),
      el("tbody", {}, entries.map((e, i) => el("tr", {},
        el("td", { "data-label": "Commit" }, el("code", { title: e.commit }, shortId(e.commit))),
        el("td", { "data-label": "Time" }, fmtTime(e.time)),
        el("td", { "data-label": "Author" }, e.author_name),
        el("td", { "data-label": "Summary", class: "summary" }, e.summary),
        el("td", { "data-label": "Size" }, e.deleted ? "deleted" : fmtSize(e.size)),
        h.show_values ? el("td", { "data-label": "Value" }, valueView(e.value)) : null,
        h.show_values ? el("td", { "data-label": "Change" }, diffView(entries[i + 1] ? entries[i + 1].value : null, e.value)) : null)))));
  } catch (e) {
    clear(box, el("p", { class: "bad" }, "Cannot read the history: " + e));
  }
}

function renderKey(doc) {
  const { area, keyB64 } = page.route;
  if (!page.built) {
    clear($("view"),
      el("h1", {}, "Key ", el("span", { class: "name", id: "key-name" }, "")),
      el("p", { class: "muted" }, "Area ", el("a", { href: areaHref(area) }, area), " · base64 ", el("code", {}, keyB64)),
      el("h2", {}, "History from Git"),
      el("div", { id: "key-history" }, el("p", { class: "muted" }, "Loading…")));
    clear($("crumbs"), el("a", { href: "/" }, "Areas"), " / ", el("a", { href: areaHref(area) }, area), " / key");
    page.built = true;
  }
  const a = findArea(area);
  const mark = a ? gitMark(a) : null;
  if (page.historyFor !== mark) {
    page.historyFor = mark;
    loadHistory();
  }
}

// ---- the loop -------------------------------------------------------------------------------

function render() {
  const doc = page.doc;
  renderHeader(doc);
  if (page.route.view === "area") renderArea(doc, page.route.area);
  else if (page.route.view === "key") renderKey(doc);
  else renderOverview(doc);
  document.title = page.route.view === "overview" ? `kvgit · ${doc.node}` : `kvgit · ${page.route.area}`;
}

let timer = null;

async function poll() {
  clearTimeout(timer);
  try {
    const r = await getJSON("/api/v1/overview");
    if (!r.ok || !r.body) throw new Error(`HTTP ${r.status}`);
    page.doc = r.body;
    render();
    const updated = $("updated");
    updated.className = "muted";
    clear(updated, `Updated ${fmtTime(Date.now() / 1000)}, every ${POLL_MS / 1000}s`);
    document.documentElement.dataset.loaded = "1";
  } catch (e) {
    const updated = $("updated");
    updated.className = "bad";
    clear(updated, `No answer from the service (${e.message || e}); retrying`);
  }
  timer = setTimeout(poll, document.hidden ? POLL_HIDDEN_MS : POLL_MS);
}

function setupSync() {
  const form = $("sync-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const token = $("sync-token").value;
    const result = $("sync-result");
    result.className = "muted";
    clear(result, "Sending…");
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const response = await fetch("/sync", { method: "POST", headers: headers, cache: "no-store" });
      let body = {};
      try { body = await response.json(); } catch (_) { body = {}; }
      if (response.ok) {
        result.className = "ok";
        clear(result, `Accepted (HTTP ${response.status}): ${body.status || "sync requested"}. The page updates as it runs.`);
        setTimeout(poll, 500);
      } else {
        result.className = "bad";
        clear(result, `Refused (HTTP ${response.status}): ${body.error || response.statusText}`);
      }
    } catch (e) {
      result.className = "bad";
      clear(result, "No answer: " + (e.message || e));
    }
  });
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden) poll();
});
setupSync();
poll();
