// ssf-sidecar dashboard: plain script, no build step, no third-party code.
// Everything goes through the admin API; text is always set with
// textContent, never parsed as HTML.
"use strict";

(function () {
  const base = "/admin";
  const pageSize = 100;
  const state = {
    streams: [],
    selected: null, // stream id
    offset: 0,
    q: "",
    more: false,
    traceURL: "",
    open: new Set(), // jtis whose claims are shown
    known: new Set(), // jtis already rendered, to highlight new ones
    refreshTimer: null,
  };

  const $ = (sel) => document.querySelector(sel);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // reconcile updates a table body to show rows for items, keeping the
  // existing row of an item whose data did not change. Rows are not
  // rebuilt under the operator's pointer on every live update, so a click
  // is never lost, and unchanged rows cost nothing.
  function reconcile(tbody, items, build) {
    const old = new Map();
    for (const tr of tbody.children) old.set(tr.dataset.key, tr);
    const rows = [];
    for (const it of items) {
      const ex = old.get(it.key);
      if (ex && ex.dataset.sig === it.sig) {
        rows.push(ex);
        continue;
      }
      const tr = build(it);
      tr.dataset.key = it.key;
      tr.dataset.sig = it.sig;
      rows.push(tr);
    }
    const cur = tbody.children;
    let same = cur.length === rows.length;
    for (let i = 0; same && i < rows.length; i++) same = cur[i] === rows[i];
    if (!same) tbody.replaceChildren(...rows);
  }

  function say(text, isError) {
    const m = $("#message");
    m.textContent = text || "";
    m.className = isError ? "error" : "";
  }

  async function api(method, path, body) {
    const opts = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (method !== "GET") {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-SSF-Admin"] = "dashboard";
      opts.body = JSON.stringify(body || {});
    }
    const resp = await fetch(base + path, opts);
    if (resp.status === 401) {
      window.location.assign(base + "/login");
      throw new Error("not logged in");
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = null; }
    }
    if (!resp.ok) {
      const d = data && (data.description || data.error);
      throw new Error(d || method + " " + path + ": " + resp.status);
    }
    return data;
  }

  // ---- formatting ----------------------------------------------------
  function ago(iso) {
    if (!iso) return "—";
    const t = Date.parse(iso);
    if (isNaN(t)) return "—";
    return duration(Date.now() - t) + " ago";
  }
  function duration(ms) {
    if (ms < 0) ms = 0;
    const s = Math.round(ms / 1000);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.round(s / 60) + " min";
    if (s < 86400) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function nsToMs(ns) { return ns / 1e6; }
  function time(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    // With the zone: a bare local time is ambiguous next to UTC logs.
    return isNaN(d) ? "—" : d.toLocaleString(undefined, { timeZoneName: "short" });
  }
  function badge(s) { return el("span", { class: "badge s-" + s, text: s }); }

  // ---- streams -------------------------------------------------------
  async function loadOverview() {
    const data = await api("GET", "/dashboard/api/overview");
    state.streams = data.streams || [];
    state.traceURL = data.trace_url || "";
    $("#logout").hidden = data.auth !== "session";
    renderStreams();
    if (!state.selected && state.streams.length) select(state.streams[0].stream_id);
    if (state.selected && !state.streams.some((s) => s.stream_id === state.selected)) {
      state.selected = null;
      $("#detail").hidden = true;
    }
  }

  function renderStreams() {
    const tb = $("#streams tbody");
    const items = state.streams.map((s) => ({ key: s.stream_id, sig: JSON.stringify([s, s.stream_id === state.selected]), s }));
    reconcile(tb, items, ({ s }) => {
      const o = s.outbox || {};
      const status = el("td", {}, badge(s.status));
      if (s.reason) status.append(el("div", { class: "muted", text: s.reason }));
      if (o.failing_since) status.append(el("div", { class: "s-failing", text: "failing since " + ago(o.failing_since) }));
      const paused = s.status === "paused";
      const actions = el("td", {},
        el("button", { type: "button", class: "quiet", "data-action": "view", text: "Timeline", onclick: () => select(s.stream_id) }),
        paused
          ? el("button", { type: "button", "data-action": "resume", text: "Resume", onclick: () => act(s, "resume") })
          : el("button", { type: "button", "data-action": "pause", text: "Pause", disabled: s.status !== "enabled", onclick: () => act(s, "pause") }),
        el("button", { type: "button", class: "quiet", "data-action": "verify", text: "Verify", disabled: s.status !== "enabled", onclick: () => act(s, "verify") }));
      return el("tr", { "data-stream": s.stream_id, "data-status": s.status, class: s.stream_id === state.selected ? "selected" : "" },
        el("td", { text: s.receiver }),
        el("td", { class: "mono", text: s.stream_id.slice(0, 12), title: s.stream_id }),
        status,
        el("td", { text: s.delivery_method }),
        el("td", { class: "mono", text: s.endpoint_host || "—" }),
        el("td", { class: "num", text: o.delivered || 0 }),
        el("td", { class: "num", text: o.backlog || 0 }),
        el("td", { text: o.backlog ? duration(nsToMs(o.oldest_age || 0)) : "—" }),
        el("td", { class: "num", text: o.dead || 0 }),
        el("td", { text: ago(o.last_success) }),
        lastError(o),
        actions);
    });
    $("#no-streams").hidden = state.streams.length > 0;
  }

  // The last error stays red only while no delivery has succeeded since.
  function lastError(o) {
    if (!o.last_error) return el("td", { class: "muted", text: "—" });
    const healed = o.last_success && Date.parse(o.last_success) > Date.parse(o.last_error_at || 0);
    return el("td", { class: healed ? "muted" : "error-text", title: healed ? "a delivery succeeded since" : "",
      text: o.last_error + " (" + ago(o.last_error_at) + ")" });
  }

  async function act(s, what) {
    try {
      await api("POST", "/streams/" + encodeURIComponent(s.stream_id) + "/" + what, {});
      say(what === "verify" ? "verification SET queued for " + s.receiver : "stream " + what + "d: " + s.receiver);
      await loadOverview();
    } catch (e) {
      say(e.message, true);
    }
  }

  function select(id) {
    if (state.selected !== id) {
      state.selected = id;
      state.offset = 0;
      state.open.clear();
      state.known.clear();
    }
    const s = state.streams.find((x) => x.stream_id === id);
    $("#detail-name").textContent = s ? s.receiver + " (" + id.slice(0, 12) + ")" : id;
    $("#detail").hidden = false;
    renderStreams();
    loadTimeline();
    loadDLQ();
  }

  // ---- timeline ------------------------------------------------------
  // Answers can arrive out of order (a live refresh of the first page
  // racing a click on Older): only the newest request's answer is shown.
  let timelineSeq = 0;
  async function loadTimeline() {
    const id = state.selected;
    if (!id) return;
    const seq = ++timelineSeq;
    const qs = new URLSearchParams({ limit: String(pageSize), offset: String(state.offset) });
    if (state.q) qs.set("q", state.q);
    const data = await api("GET", "/dashboard/api/streams/" + encodeURIComponent(id) + "/timeline?" + qs);
    if (id !== state.selected || seq !== timelineSeq) return;
    state.more = data.more;
    renderTimeline(data);
  }

  function renderTimeline(data) {
    const items = data.items || [];
    const firstLoad = state.known.size === 0;
    const rows = [];
    for (const it of items) {
      const fresh = !firstLoad && !state.known.has(it.jti);
      state.known.add(it.jti);
      const open = state.open.has(it.jti);
      rows.push({ key: "set:" + it.jti, sig: JSON.stringify([it, open]), build: () => setRow(it, fresh) });
      if (open) rows.push({ key: "claims:" + it.jti, sig: "", build: () => { loadClaimsSoon(it.jti); return claimsRow(it.jti); } });
    }
    reconcile($("#timeline tbody"), rows, (r) => r.build());
    $("#no-sets").hidden = items.length > 0;
    const from = items.length ? state.offset + 1 : 0;
    let info = from + "–" + (state.offset + items.length);
    if (data.truncated) info += " (search covered the newest " + data.scanned + " SETs)";
    $("#page-info").textContent = info;
    $("#newer").disabled = state.offset === 0;
    $("#older").disabled = !state.more;
  }

  // A claims row is filled once it is in the table.
  function loadClaimsSoon(jti) { setTimeout(() => loadClaims(jti, false), 0); }

  function attemptsCell(it) {
    const td = el("td", {});
    for (const a of it.attempts || []) {
      const good = a.outcome === "delivered" || a.outcome === "acked";
      const bad = a.outcome === "dead" || a.outcome === "retry" || a.outcome === "set_err";
      const label = (a.status_code ? a.status_code : a.outcome) + " · " + nsToMs(a.latency || 0).toFixed(1) + " ms";
      td.append(el("span", { class: "attempt" + (good ? " good" : bad ? " bad" : ""), title: (a.outcome || "") + (a.error ? ": " + a.error : "") + " at " + time(a.time), text: label }));
    }
    if (!td.childNodes.length) td.append(el("span", { class: "muted", text: "none yet" }));
    return td;
  }

  function setRow(it, fresh) {
    const trace = it.trace_link
      ? el("a", { href: it.trace_link, target: "_blank", rel: "noopener noreferrer", text: it.trace_id.slice(0, 8) + "…" })
      : el("span", { class: "muted mono", text: it.trace_id ? it.trace_id.slice(0, 8) + "…" : "—" });
    const stateCell = el("td", {}, badge(it.state));
    if (it.reason) stateCell.append(el("div", { class: "error-text", text: it.reason }));
    return el("tr", { class: "set-row" + (fresh ? " fresh" : ""), "data-jti": it.jti, "data-event": it.event, "data-state": it.state },
      el("td", { text: time(it.issued_at || it.enqueued_at) }),
      el("td", { title: it.event_type, text: it.event }),
      el("td", { class: "mono subject", text: it.subject || "—" }),
      el("td", { text: it.initiator || "—" }),
      el("td", { text: it.source || "—" }),
      stateCell,
      attemptsCell(it),
      el("td", {}, trace),
      el("td", {}, el("button", { type: "button", class: "quiet", "data-action": "claims", text: state.open.has(it.jti) ? "Hide" : "Claims", onclick: () => toggleClaims(it.jti) })));
  }

  function claimsRow(jti) {
    return el("tr", { class: "claims-row", "data-claims": jti },
      el("td", { colSpan: 9 },
        el("div", { class: "toolbar" },
          el("span", { class: "mono", text: "jti " + jti }),
          el("button", { type: "button", class: "quiet", "data-action": "reveal", text: "Reveal subject", onclick: () => loadClaims(jti, true) })),
        el("pre", { class: "claims", text: "loading…" })));
  }

  function toggleClaims(jti) {
    if (state.open.has(jti)) state.open.delete(jti); else state.open.add(jti);
    loadTimeline().catch((e) => say(e.message, true));
  }

  async function loadClaims(jti, reveal) {
    const row = document.querySelector('tr[data-claims="' + CSS.escape(jti) + '"]');
    if (!row) return;
    try {
      const qs = new URLSearchParams();
      if (reveal) qs.set("reveal", "1");
      // Without a search the SET is on the current page: tell the server
      // how far back to look (with slack for SETs that arrived since).
      if (!state.q) qs.set("within", String(state.offset + pageSize + 100));
      const d = await api("GET", "/dashboard/api/streams/" + encodeURIComponent(state.selected) + "/sets/" + encodeURIComponent(jti) + "?" + qs);
      row.querySelector("pre").textContent = JSON.stringify(d.claims, null, 2);
      if (reveal) {
        const prev = row.previousElementSibling;
        if (prev) prev.querySelector(".subject").textContent = d.subject;
        row.querySelector('[data-action="reveal"]').disabled = true;
      }
    } catch (e) {
      row.querySelector("pre").textContent = e.message;
    }
  }

  // ---- dead letter ---------------------------------------------------
  async function loadDLQ() {
    const id = state.selected;
    if (!id) return;
    const list = await api("GET", "/outbox/" + encodeURIComponent(id) + "/dlq?limit=100");
    if (id !== state.selected) return;
    const items = (list || []).map((d) => ({ key: d.jti, sig: JSON.stringify(d), d }));
    reconcile($("#dlq tbody"), items, ({ d }) => el("tr", { "data-dead": d.jti },
      el("td", { text: time(d.dead_at) }),
      el("td", { text: (d.event_type || "").split("/").pop() }),
      el("td", { class: "jti", text: d.jti }),
      el("td", { class: "error-text", text: d.reason }),
      el("td", { class: "num", text: d.attempt_count }),
      el("td", {}, el("button", { type: "button", class: "quiet", "data-action": "replay-one", text: "Replay", onclick: () => dlq("replay", [d.jti]) }))));
    const n = items.length;
    $("#no-dlq").hidden = n > 0;
    $("#dlq-count").textContent = n ? "(" + n + (n === 100 ? "+" : "") + ")" : "";
    $("#replay-all").disabled = n === 0;
    $("#purge-all").disabled = n === 0;
  }

  async function dlq(what, jtis) {
    try {
      // No jtis member means every dead letter of the stream.
      const r = await api("POST", "/outbox/" + encodeURIComponent(state.selected) + "/" + what, jtis ? { jtis } : {});
      say(what === "replay" ? "replayed " + r.replayed + " SET(s)" : "purged " + r.purged + " SET(s)");
      await Promise.all([loadDLQ(), loadTimeline(), loadOverview()]);
    } catch (e) {
      say(e.message, true);
    }
  }

  // Purging cannot be undone: the first click arms the button, the second
  // (within 4 s) purges.
  function armedClick(btn, fn) {
    let timer = null;
    btn.addEventListener("click", () => {
      if (btn.classList.contains("armed")) {
        btn.classList.remove("armed");
        btn.textContent = "Purge all";
        clearTimeout(timer);
        fn();
        return;
      }
      btn.classList.add("armed");
      btn.textContent = "Click again to purge";
      timer = setTimeout(() => { btn.classList.remove("armed"); btn.textContent = "Purge all"; }, 4000);
    });
  }

  // ---- live updates ----------------------------------------------------
  // A search or a deep page makes the server read up to its limit of
  // SETs; while one is shown, live updates refresh it at most this often.
  const heavyEvery = 3000;
  let lastHeavy = 0;

  function scheduleRefresh(all) {
    if (state.refreshTimer) return;
    state.refreshTimer = setTimeout(async () => {
      state.refreshTimer = null;
      try {
        await loadOverview();
        if (!state.selected) return;
        const heavy = state.offset > 0 || state.q !== "";
        if (all || !heavy) {
          await Promise.all([loadTimeline(), loadDLQ()]);
        } else if (Date.now() - lastHeavy > heavyEvery) {
          lastHeavy = Date.now();
          await Promise.all([loadTimeline(), loadDLQ()]);
        } else {
          await loadDLQ();
          scheduleRefresh(false);
        }
      } catch (e) {
        say(e.message, true);
      }
    }, 250);
  }

  function connect() {
    const live = $("#live");
    const es = new EventSource(base + "/dashboard/events");
    const on = (ev) => {
      let d = {};
      try { d = JSON.parse(ev.data); } catch (e) { /* ignore */ }
      if (!d.stream_id || d.stream_id === state.selected || ev.type === "resync") scheduleRefresh(ev.type === "resync");
      else scheduleRefresh(false);
    };
    es.addEventListener("hello", () => { live.textContent = "live"; live.className = "live"; scheduleRefresh(true); });
    for (const k of ["enqueue", "attempt", "delivered", "dead", "backoff", "resync"]) es.addEventListener(k, on);
    es.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
  }

  // ---- wiring ----------------------------------------------------------
  function init() {
    $("#search").addEventListener("submit", (e) => {
      e.preventDefault();
      state.q = $("#q").value.trim();
      state.offset = 0;
      state.known.clear();
      loadTimeline().catch((err) => say(err.message, true));
    });
    $("#clear-search").addEventListener("click", () => {
      $("#q").value = "";
      state.q = "";
      state.offset = 0;
      loadTimeline().catch((err) => say(err.message, true));
    });
    $("#older").addEventListener("click", () => {
      if (!state.more) return;
      state.offset += pageSize;
      loadTimeline().catch((err) => say(err.message, true));
    });
    $("#newer").addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - pageSize);
      loadTimeline().catch((err) => say(err.message, true));
    });
    $("#replay-all").addEventListener("click", () => dlq("replay", null));
    armedClick($("#purge-all"), () => dlq("purge", null));
    $("#logout").addEventListener("click", async () => {
      try { await api("POST", "/dashboard/logout", {}); } catch (e) { /* ignore */ }
      window.location.assign(base + "/login");
    });
    loadOverview().then(() => { if ($("#message").textContent === "Loading…") say(""); }).catch((e) => say(e.message, true));
    connect();
  }

  init();
})();
