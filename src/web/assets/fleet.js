// The fleet section: this appliance's shard and the peers' status ([fleet] peers), from
// /api/status every 15 s. Shown only in a fleet (a shard other than 0/1, or peers).
"use strict";
(() => {
  const el = document.getElementById("fleet");
  if (!el) return;
  const text = (tag, s) => { const e = document.createElement(tag); e.textContent = s; return e; };
  function render(f) {
    if (!f || (f.shard === "0/1" && f.peers.length === 0)) { el.hidden = true; return; }
    el.hidden = false;
    el.replaceChildren(text("h2", "Fleet"));
    const total = f.total == null ? "" : ` of ${f.total}`;
    el.append(text("p", `This appliance: shard ${f.shard}, ${f.owned}${total} mailboxes.`));
    if (f.peers.length === 0) return;
    const t = document.createElement("table");
    const head = t.createTHead().insertRow();
    for (const h of ["Peer", "Shard", "Mailboxes", "Phase", "Appended", "Status"]) head.append(text("th", h));
    const body = t.createTBody();
    for (const p of f.peers) {
      const r = body.insertRow();
      const phase = p.phase == null ? "" : (typeof p.phase === "string" ? p.phase : JSON.stringify(p.phase));
      for (const v of [p.url, p.shard ?? "", p.mailboxes ?? "", phase, p.appended_since_start ?? "", p.error ?? "ok"]) {
        r.insertCell().textContent = String(v);
      }
    }
    el.append(t);
  }
  async function poll() {
    try {
      const r = await fetch("/api/status", { cache: "no-store" });
      if (r.ok) render((await r.json()).fleet);
    } catch (e) { /* the daemon may be restarting */ }
    setTimeout(poll, 15000);
  }
  poll();
})();
