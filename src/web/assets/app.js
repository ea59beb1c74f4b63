// The status page: renders /api/status (pushed by Server-Sent Events, polled when the
// stream is down), the mailbox table (/api/mailboxes, filtered and paged by the server)
// and one mailbox's detail. Text is always inserted as text, never as HTML.
"use strict";

const $ = (s, root) => (root || document).querySelector(s);
const view = { status: "", q: "", sort: "mailbox", order: "asc", page: 1, per_page: 100, detail: null };
let pollTimer = null;
let tableTimer = null;
let lastDetail = 0;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}
const num = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
function bytes(n) {
  if (n == null) return "–";
  const u = ["B", "KB", "MB", "GB", "TB"];
  let i = 0, v = Number(n);
  while (v >= 1000 && i < u.length - 1) { v /= 1000; i++; }
  return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + u[i];
}
function when(t) {
  if (!t) return "–";
  return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}
function dur(s) {
  if (s == null) return "unknown";
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + (s % 60) + "s";
  return s + "s";
}
const rate = (msgs, b) => msgs.toFixed(1) + " msg/s, " + bytes(b) + "/s";
const STATUSES = ["Queued", "Syncing", "Synced", "IncrementalSyncing", "Failed", "CutoverPending", "Completed", "Stopped"];
let lastChart = 0;
let lettersSetUp = { before: false, after: false };
const MX = { Unknown: "not looked up yet", Legacy: "legacy server", Office365: "Office 365" };

// One letter of [notify] for a mailbox: when it was delivered, or why not.
function letter(name, at, setUp) {
  if (at) return name + " delivered " + when(at);
  return name + (setUp ? " not delivered" : " not set up");
}
function lettersText(r) {
  return letter("notice", r.notice_delivered_unix, lettersSetUp.before) + "\n" +
    letter("welcome", r.welcome_delivered_unix, lettersSetUp.after);
}

function renderDomains(o) {
  const card = $("#cutover-card");
  card.hidden = !o.domains.length;
  const tb = $("#domains tbody"); tb.replaceChildren();
  for (const d of o.domains) {
    const grace = d.grace_left_seconds == null ? (d.mx === "Office365" && d.in_cutover === 0 ? "over" : "–")
      : d.grace_left_seconds === 0 ? "over: final pass now" : dur(d.grace_left_seconds) + " (final pass " + when(d.complete_after_unix) + ")";
    tb.append(el("tr", { "data-domain": d.domain, "data-mx": d.mx },
      el("td", { class: "mbx", text: d.domain, "data-label": "Domain" }),
      el("td", { "data-label": "MX" }, el("span", { class: "mx " + d.mx, text: MX[d.mx] || d.mx }),
        d.moved_since_unix ? el("span", { class: "muted", text: " since " + when(d.moved_since_unix) }) : ""),
      el("td", { text: d.exchanges.join(", ") || "–", "data-label": "Exchanges" }),
      el("td", { "data-label": "Looked up" }, when(d.checked_unix),
        d.error ? el("div", { class: "err-inline", text: "lookup failing: " + d.error }) : ""),
      el("td", { class: "num", text: num(d.mailboxes), "data-label": "Mailboxes" }),
      el("td", { class: "num", text: num(d.in_cutover), "data-label": "In cutover" }),
      el("td", { class: "num", text: num(d.completed), "data-label": "Completed" }),
      el("td", { class: "grace", text: grace, "data-label": "Grace left" })));
  }
}
function set(id, text) { const e = document.getElementById(id); if (e) e.textContent = text; }

function renderStatus(o) {
  const ph = $("#phase");
  ph.textContent = o.phase; ph.className = "phase " + o.phase;
  lettersSetUp = o.letters;
  // Without [notify] there is nothing to show per mailbox: no column for it.
  document.body.classList.toggle("no-letters", !o.letters.before && !o.letters.after);
  const left = o.domains.map((d) => d.grace_left_seconds).filter((g) => g != null);
  set("phase-note", o.phase === "CutoverPending" && left.length ? "grace left " + dur(Math.max(...left)) : "");
  renderDomains(o);
  set("updated", "state of " + when(o.snapshot_unix));
  $("#logout").hidden = !o.login;
  set("mailbox-total", num(o.mailboxes));
  const ul = $("#by-status"); ul.replaceChildren();
  for (const st of STATUSES) {
    const n = o.by_status[st] || 0;
    if (n > 0) ul.append(el("li", {}, el("span", { class: "st " + st, text: st }), " " + num(n)));
  }
  const t = o.totals;
  set("count-source", num(t.source_messages)); set("bytes-source", bytes(t.source_bytes));
  set("count-dest", num(t.dest_messages)); set("bytes-dest", bytes(t.dest_bytes));
  set("count-pending", num(t.pending_messages)); set("bytes-pending", bytes(t.pending_bytes));
  set("count-skipped", num(t.skipped)); set("count-failed", num(t.failed));
  set("appended", num(o.appended_since_start));
  set("rate-source", rate(o.rates.source_msgs_per_s, o.rates.source_bytes_per_s));
  set("rate-dest", rate(o.rates.upstream_msgs_per_s, o.rates.upstream_bytes_per_s));
  set("eta", o.eta_seconds == null ? "unknown" : o.eta_seconds === 0 ? "done" : dur(o.eta_seconds));
  const th = o.throttling;
  set("throttled", th.mailboxes ? th.mailboxes + " in backoff" : "none");
  set("throttled-until", th.until_unix ? "until " + when(th.until_unix) : "");
  set("throttled-total", num(th.throttled_total) + " throttles so far, " + dur(th.backoff_seconds_total) + " paused");
  set("disk-used", bytes(o.disk.spool_used_bytes));
  set("disk-free", o.disk.free_bytes == null ? "unknown" : bytes(o.disk.free_bytes));
  set("cutover", o.cutover.length ? o.cutover.length + " mailbox(es) in cutover; last final pass after " +
    when(Math.max(...o.cutover.map((c) => c.complete_after_unix || 0))) : "");
}

function renderChart(points) {
  const svg = $("#chart"), W = 800, H = 160, pad = 18;
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const mk = (tag, a) => { const e = document.createElementNS(ns, tag); for (const k in a) e.setAttribute(k, a[k]); return e; };
  if (!points || points.length < 2) { set("chart-note", "collecting samples…"); return; }
  const t0 = points[0][0], t1 = points[points.length - 1][0];
  const max = Math.max(1, ...points.map((p) => Math.max(p[1], p[2])));
  const x = (t) => pad + (W - 2 * pad) * (t - t0) / Math.max(1, t1 - t0);
  const y = (v) => H - pad - (H - 2 * pad) * v / max;
  svg.append(mk("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, class: "axis" }));
  const path = (i) => points.map((p, j) => (j ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[i]).toFixed(1)).join(" ");
  svg.append(mk("path", { d: path(2), class: "src" }));
  svg.append(mk("path", { d: path(1), class: "up" }));
  const label = mk("text", { x: pad, y: 12 }); label.textContent = "max " + max.toFixed(1) + " msg/s";
  svg.append(label);
  set("chart-note", when(t0) + " → " + when(t1));
}

function bar(frac, cls) {
  const s = el("span"); s.style.width = Math.round(100 * frac) + "%";
  const b = el("div", { class: "bar " + cls, title: Math.round(100 * frac) + "%" }, s);
  return b;
}

async function getJSON(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (r.status === 401) { location.href = "/login"; throw new Error("logged out"); }
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}

async function loadTable() {
  const p = new URLSearchParams({ sort: view.sort, order: view.order, page: view.page, per_page: view.per_page });
  if (view.status) p.set("status", view.status);
  if (view.q) p.set("q", view.q);
  let data;
  try { data = await getJSON("/api/mailboxes?" + p); } catch (e) { return; }
  const tb = $("#mailboxes tbody"); tb.replaceChildren();
  const now = Date.now() / 1000;
  for (const r of data.rows) {
    const c = r.counts;
    const tr = el("tr", { "data-mailbox": r.mailbox, "data-status": r.status },
      el("td", { class: "mbx", text: r.mailbox, "data-label": "Mailbox" }),
      el("td", { "data-label": "Status" }, el("span", { class: "st " + r.status, text: r.status })),
      el("td", { "data-label": "Progress", title: num(c.dest_messages + c.skipped) + " of " + num(c.source_messages) + " messages, " +
        bytes(c.dest_bytes) + " of " + bytes(c.source_bytes) },
        bar(r.progress_messages, "msgs"), bar(r.progress_bytes, "bytes")),
      el("td", { class: "num", text: num(r.items_synced), "data-label": "Synced" }),
      el("td", { class: "num", text: num(r.items_skipped), "data-label": "Skipped" }),
      el("td", { class: "num", text: num(r.items_failed), "data-label": "Failed" }),
      el("td", { text: when(r.last_sync_unix), "data-label": "Last sync" }),
      el("td", { text: dur(now - r.status_since_unix), "data-label": "In status" }),
      el("td", { class: "waiting", text: r.waiting_on, "data-label": "Waiting on" }),
      el("td", { class: "letters letters-col", text: lettersText(r), "data-label": "Letters",
        "data-notice": r.notice_delivered_unix || "", "data-welcome": r.welcome_delivered_unix || "" }),
      el("td", { class: "err", text: r.last_error || "", title: r.last_error || "", "data-label": "Last error" }));
    tr.addEventListener("click", () => openDetail(r.mailbox));
    tb.append(tr);
  }
  set("row-count", num(data.total) + " mailbox(es)");
  set("page-info", "page " + data.page + " of " + data.pages);
  $("#prev").disabled = data.page <= 1;
  $("#next").disabled = data.page >= data.pages;
  for (const th of document.querySelectorAll("#mailboxes th[data-sort]")) {
    th.classList.toggle("sorted-asc", th.dataset.sort === view.sort && view.order === "asc");
    th.classList.toggle("sorted-desc", th.dataset.sort === view.sort && view.order === "desc");
  }
}

async function openDetail(id) {
  view.detail = id;
  lastDetail = Date.now();
  if (location.hash !== "#" + encodeURIComponent(id)) history.replaceState(null, "", "#" + encodeURIComponent(id));
  const base = "/api/mailboxes/" + encodeURIComponent(id);
  let d, folders, probs;
  try { [d, folders, probs] = await Promise.all([getJSON(base), getJSON(base + "/folders"), getJSON(base + "/problems")]); }
  catch (e) { return; }
  if (view.detail !== id) return;
  const sec = $("#detail"); sec.hidden = false;
  const m = d.mailbox, c = m.counts;
  set("detail-title", m.mailbox);
  $("#detail-summary").replaceChildren(
    el("span", { class: "st " + m.status, text: m.status }),
    " · " + num(c.dest_messages) + " of " + num(c.source_messages) + " messages at the destination (" +
      bytes(c.dest_bytes) + " of " + bytes(c.source_bytes) + ") · " + num(c.skipped) + " skipped · " +
      num(c.failed) + " failed · last sync " + when(m.last_sync_unix) + " · " + num(m.passes) + " passes" +
      (m.waiting_on ? " · waiting on: " + m.waiting_on : ""));
  set("detail-letters", lettersText(m).replace("\n", " · "));
  set("detail-error", m.last_error || "");
  $("#detail-error").hidden = !m.last_error;
  $("#detail-no-error").hidden = !!m.last_error;
  $("#detail-csv").href = base + "/problems.csv";
  const ft = $("#folders tbody"); ft.replaceChildren();
  for (const f of folders) {
    ft.append(el("tr", {}, el("td", { text: f.name + (f.gone ? " (gone at the source)" : "") }),
      el("td", { text: f.dest_name || "not mapped yet" }), el("td", { text: f.rule }),
      el("td", { class: "num", text: num(f.source_messages) }), el("td", { class: "num", text: num(f.dest_messages) }),
      el("td", { class: "num", text: num(f.pending_messages) }), el("td", { class: "num", text: num(f.skipped) }),
      el("td", { class: "num", text: num(f.failed) })));
  }
  const pt = $("#problems tbody"); pt.replaceChildren();
  for (const p of probs.items) {
    pt.append(el("tr", { "data-state": p.state }, el("td", { class: "st", text: p.state }), el("td", { text: p.folder }),
      el("td", { text: p.date }), el("td", { text: p.subject }), el("td", { text: p.sender }),
      el("td", { class: "num", text: p.size ? bytes(p.size) : "" }), el("td", { text: p.reason })));
  }
  set("problems-count", "(" + probs.items.length + (probs.omitted ? ", " + probs.omitted + " more not listed" : "") + ")");
  const tl = $("#throttles"); tl.replaceChildren();
  for (const t of d.throttles.slice().reverse()) {
    tl.append(el("li", { text: when(t.at_unix) + ": paused " + (t.backoff_ms / 1000).toFixed(1) + " s: " + t.text }));
  }
  if (!d.throttles.length) tl.append(el("li", { text: "no throttle since the daemon started" }));
}

async function control(action, mailboxes, out) {
  if (action === "complete" && !confirm("Complete " + (mailboxes.length ? mailboxes.join(", ") : "EVERY mailbox") +
      "? A final sync runs, then the mailbox is no longer synced.")) return;
  out.textContent = "sending " + action + "…";
  try {
    const r = await fetch("/api/controls/" + action, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ mailboxes }),
    });
    const j = await r.json();
    out.textContent = r.ok ? action + " requested for " + (mailboxes.length ? mailboxes.join(", ") : "every mailbox") +
      "; the daemon acts on it within a second." : "refused: " + (j.error || r.status);
  } catch (e) { out.textContent = "could not reach the daemon: " + e; }
}

function refreshSoon() {
  if (tableTimer) return;
  tableTimer = setTimeout(() => {
    tableTimer = null; loadTable();
    // The detail reads the spool's records (and some headers): not more than every 3 s.
    if (view.detail && Date.now() - lastDetail > 3000) openDetail(view.detail);
  }, 1000);
}

async function poll() {
  try { renderStatus(await getJSON("/api/status")); refreshSoon(); } catch (e) { /* the daemon may be restarting */ }
}

function live() {
  if (!window.EventSource) { startPolling(); return; }
  const es = new EventSource("/api/events");
  es.addEventListener("status", (e) => {
    renderStatus(JSON.parse(e.data)); refreshSoon();
    if (Date.now() - lastChart > 10000) chart();
  });
  es.onopen = () => { set("live", "live"); $("#live").className = "live on"; stopPolling(); };
  es.onerror = () => { set("live", "reconnecting (polling)"); $("#live").className = "live off"; startPolling(); };
}
function startPolling() { if (!pollTimer) pollTimer = setInterval(poll, 5000); }
function stopPolling() { if (pollTimer) { clearInterval(pollTimer); pollTimer = null; } }

async function chart() { lastChart = Date.now(); try { renderChart((await getJSON("/api/history")).points); } catch (e) { /* next time */ } }

function init() {
  $("#status-filter").addEventListener("change", (e) => { view.status = e.target.value; view.page = 1; loadTable(); });
  let typing = null;
  $("#search").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => { view.q = e.target.value.trim(); view.page = 1; loadTable(); }, 250);
  });
  $("#per-page").addEventListener("change", (e) => { view.per_page = Number(e.target.value); view.page = 1; loadTable(); });
  $("#prev").addEventListener("click", () => { view.page = Math.max(1, view.page - 1); loadTable(); });
  $("#next").addEventListener("click", () => { view.page += 1; loadTable(); });
  for (const th of document.querySelectorAll("#mailboxes th[data-sort]")) {
    th.addEventListener("click", () => {
      if (view.sort === th.dataset.sort) view.order = view.order === "asc" ? "desc" : "asc";
      else { view.sort = th.dataset.sort; view.order = "asc"; }
      loadTable();
    });
  }
  for (const b of document.querySelectorAll("#global-controls button")) {
    b.addEventListener("click", () => control(b.dataset.action, [], $("#control-result")));
  }
  for (const b of document.querySelectorAll("#detail-controls button")) {
    b.addEventListener("click", () => control(b.dataset.action, [view.detail], $("#detail-result")));
  }
  $("#logout").addEventListener("click", async () => {
    try {
      await fetch("/logout", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
    } finally { location.href = "/login"; }
  });
  $("#detail-close").addEventListener("click", () => { view.detail = null; $("#detail").hidden = true; history.replaceState(null, "", "#"); });
  poll();
  loadTable();
  chart(); setInterval(chart, 30000);
  live();
  if (location.hash.length > 1) openDetail(decodeURIComponent(location.hash.slice(1)));
}
document.addEventListener("DOMContentLoaded", init);
