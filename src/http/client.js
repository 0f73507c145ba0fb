// The browser client (SPEC §5), served at /client.js for the page at /.
"use strict";
(() => {
  // ---- configuration -------------------------------------------------------
  const BACKOFF_BASE_MS = 500;     // first retry after ~0.5 s
  const BACKOFF_MAX_MS = 10000;    // never wait more than ~10 s
  const JITTER = 0.3;              // ±30 % so clients don't reconnect in lockstep
  const FADE_SHARE = 0.25;         // fade over the last quarter of a message's life
  const MAX_SEND_BYTES = 60000;    // the server closes with 1009 above 64 KiB
  const CONNECT_TIMEOUT_MS = 10000; // no welcome by then: drop the attempt and retry
  const TYPING_EVERY_MS = 2000;    // the server relays at most one typing signal per 2 s
  const TYPING_SHOW_MS = 4000;     // how long "… is typing" stays after a signal

  // ---- elements ------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  const el = {
    joinForm: $("join-form"), name: $("name"), room: $("room"), join: $("join"), cancel: $("cancel"),
    roombar: $("roombar"), roombarRoom: $("roombar-room"), roombarName: $("roombar-name"),
    switchRoom: $("switch"), leave: $("leave"), onlineCount: $("online-count"),
    sendForm: $("send-form"), message: $("message"), send: $("send"),
    log: $("messages"), online: $("online"),
    status: $("status"), statusText: $("status-text"), statusDetail: $("status-detail"),
    roomTitle: $("room-title"), typing: $("typing"),
  };

  // ---- state ---------------------------------------------------------------
  let ws = null;               // the current WebSocket, if any
  let wanted = null;           // {room, name} the user asked for; null when not joined
  let welcomed = false;        // the current socket received its welcome
  let everWelcomed = false;    // some socket of this session was welcomed (so a new one is a reconnect)
  let myName = null;           // client_id from the latest welcome (may be "alice#2")
  const myNames = new Set();   // every name this session has had, for marking own messages
  let ttlMs = 60000;
  let epoch = null;            // epoch of the ids we hold
  let lastId = null;           // highest message id seen in that epoch
  let attempt = 0;             // failed attempts since the last welcome
  let retryTimer = null, retryAt = 0, countdownTimer = null;
  let users = [];
  const byId = new Map();      // message id -> entry (messages of the current epoch)
  const typers = new Map();    // name -> when its "is typing" ends (ms)
  let typingTimer = null, typingSentAt = 0;
  const entries = new Set();   // every entry in the log (messages, join/leave lines, notices)

  // Clock offset: local time minus server time, estimated from live events
  // (receive time minus event timestamp; the minimum over recent samples is the
  // offset plus the smallest network delay). Expiry is computed on the server's
  // clock and shifted by this, so a wrong local clock does not hide messages early.
  const skewSamples = [];
  let skew = 0;

  function noteSkew(serverMs) {
    if (!Number.isFinite(serverMs)) return;
    skewSamples.push(Date.now() - serverMs);
    if (skewSamples.length > 16) skewSamples.shift();
    const s = Math.min(...skewSamples);
    if (Math.abs(s - skew) > 250) { skew = s; for (const e of entries) schedule(e); }
    else skew = s;
  }

  // RFC 3339 with microseconds -> ms since epoch. Date.parse handles at most
  // milliseconds reliably, so the fraction is cut to three digits.
  function parseTs(ts) {
    if (typeof ts !== "string") return NaN;
    const m = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)$/i.exec(ts.trim());
    if (!m) return Date.parse(ts);
    const frac = m[2] ? (m[2] + "000").slice(0, 4) : "";
    return Date.parse(m[1] + frac + m[3]);
  }

  const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  function timeEl(serverMs) {
    const t = document.createElement("time");
    const local = new Date(Number.isFinite(serverMs) ? serverMs : Date.now());
    t.dateTime = local.toISOString();
    t.textContent = timeFmt.format(local);
    return t;
  }

  // ---- status --------------------------------------------------------------
  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.statusText.textContent = text || state;
    el.statusDetail.textContent = "";
    clearInterval(countdownTimer);
    countdownTimer = null;
    const open = state === "online";
    el.send.disabled = !open;
  }

  // Once joined, the join form folds away: the room bar says where one is, and switching rooms
  // or leaving are its explicit actions. "Switch room" opens the form again (with Cancel).
  function showForm(show) {
    el.joinForm.hidden = !show;
    el.cancel.hidden = !wanted;
    el.roombar.hidden = show || !wanted;
    if (wanted) {
      el.roombarRoom.textContent = wanted.room;
      el.roombarName.textContent = myName || wanted.name;
    }
  }

  function setTtl(ms) {
    ttlMs = ms;
    el.log.dataset.empty = "Messages disappear " + Math.round(ms / 1000) + " s after they are sent.";
  }

  function showCountdown() {
    const left = Math.max(0, retryAt - Date.now()) / 1000;
    el.statusDetail.textContent = " in " + left.toFixed(1) + " s";
  }

  // ---- the log -------------------------------------------------------------
  function nearBottom() {
    return el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 48;
  }

  // Entries are shown in arrival order: the server sends a room's events in
  // order, and a welcome (with its history) is always a socket's first frame.
  function insert(entry) {
    const stick = nearBottom();
    el.log.append(entry.el);
    entries.add(entry);
    schedule(entry);
    if (stick) el.log.scrollTop = el.log.scrollHeight;
  }

  function remove(entry) {
    clearTimeout(entry.timer);
    if (entry.anim) entry.anim.cancel();
    if (entry.lifeAnim) entry.lifeAnim.cancel();
    entry.el.remove();
    entries.delete(entry);
    if (entry.id != null && byId.get(entry.id) === entry) byId.delete(entry.id);
  }

  // Fade out over the last quarter of the entry's life; the fade ends exactly at
  // its expiry (server time + ttl, shifted to the local clock), then it is removed.
  function schedule(entry) {
    clearTimeout(entry.timer);
    if (entry.anim) { entry.anim.cancel(); entry.anim = null; }
    const remaining = entry.expires + skew - Date.now();
    if (remaining <= 0) { remove(entry); return; }
    const fade = Math.max(1, ttlMs * FADE_SHARE);
    if (entry.el.animate) {
      entry.anim = entry.el.animate([{ opacity: 1 }, { opacity: 0 }],
        { duration: fade, delay: remaining - fade, fill: "forwards", easing: "linear" });
    }
    if (entry.life && entry.life.animate) {
      // The bar shows the share of its life left, from the moment it is drawn.
      if (entry.lifeAnim) entry.lifeAnim.cancel();
      const left = Math.min(1, remaining / ttlMs);
      entry.lifeAnim = entry.life.animate(
        [{ transform: "scaleX(" + left + ")" }, { transform: "scaleX(0)" }],
        { duration: remaining, fill: "forwards", easing: "linear" });
    }
    entry.timer = setTimeout(() => remove(entry), remaining);
  }

  // Timers are throttled in background tabs; sweep so nothing outlives its time.
  function sweep() {
    const now = Date.now();
    for (const e of entries) if (e.expires + skew <= now) remove(e);
  }
  setInterval(sweep, 1000);
  document.addEventListener("visibilitychange", sweep);

  function addMessage(ev) {
    const id = Number(ev.id);
    if (Number.isFinite(id) && byId.has(id)) return;          // de-duplicate by id
    const at = parseTs(ev.timestamp);
    if (!Number.isFinite(at)) return;
    const expires = at + ttlMs;
    if (expires + skew <= Date.now()) return;                  // already gone
    const author = String(ev.client_id ?? "");
    const mine = myNames.has(author);

    const div = document.createElement("div");
    div.className = "msg" + (mine ? " mine" : "");
    if (Number.isFinite(id)) div.dataset.id = String(id);
    const meta = document.createElement("div");
    meta.className = "meta";
    const who = document.createElement("span");
    who.className = "author";
    who.textContent = author;                                  // text, never HTML
    if (mine) {
      const you = document.createElement("span");
      you.className = "you";
      you.textContent = " (you)";
      who.append(you);
    }
    meta.append(who, timeEl(at));
    const body = document.createElement("div");
    body.className = "content";
    body.textContent = String(ev.content ?? "");              // text, never HTML
    const life = document.createElement("div");
    life.className = "life";
    life.setAttribute("aria-hidden", "true");
    const bar = document.createElement("span");
    life.append(bar);
    div.title = "disappears at " + timeFmt.format(new Date(expires + skew));
    div.append(meta, body, life);

    const entry = { el: div, at, expires, id: Number.isFinite(id) ? id : null, life: bar, meta };
    if (entry.id != null) {
      byId.set(entry.id, entry);
      if (lastId == null || entry.id > lastId) lastId = entry.id;
    }
    insert(entry);
  }

  function addLine(kind, text, serverMs) {
    const at = Number.isFinite(serverMs) ? serverMs : Date.now() - skew;
    const div = document.createElement("div");
    div.className = "event is-" + kind;
    const span = document.createElement("span");
    span.textContent = text;                                   // text, never HTML
    div.append(span, timeEl(at));
    insert({ el: div, at, expires: at + ttlMs, id: null });
  }

  function markStale() {
    for (const e of entries) {
      if (e.id == null || e.stale) continue;
      e.stale = true;
      e.el.classList.add("stale");
      e.el.title += " (no longer held by the server)";
      const note = document.createElement("span");
      note.className = "stale-note";
      note.textContent = "no longer held by the server";
      e.meta.append(note);
    }
    byId.clear();
  }

  function clearAll() {
    for (const e of [...entries]) remove(e);
    byId.clear();
  }

  // ---- typing --------------------------------------------------------------
  function renderTyping() {
    const now = Date.now();
    for (const [name, until] of typers) if (until <= now) typers.delete(name);
    const names = [...typers.keys()];
    el.typing.textContent = names.length === 0 ? ""
      : names.length === 1 ? names[0] + " is typing…"
      : names.length === 2 ? names[0] + " and " + names[1] + " are typing…"
      : names.length + " people are typing…";
    clearTimeout(typingTimer);
    if (names.length) typingTimer = setTimeout(renderTyping, Math.min(...typers.values()) - now + 10);
  }

  function stopTyping(name) {
    if (typers.delete(name)) renderTyping();
  }

  // ---- online list ---------------------------------------------------------
  function renderUsers() {
    el.onlineCount.textContent = String(users.length);
    const sorted = [...users].sort((a, b) => (a === myName ? -1 : b === myName ? 1 : a.localeCompare(b)));
    el.online.replaceChildren(...sorted.map((u) => {
      const li = document.createElement("li");
      li.setAttribute("role", "listitem");
      li.textContent = u === myName ? u + " (you)" : u;
      li.title = u;
      if (u === myName) li.className = "me";
      return li;
    }));
  }

  // ---- connection ----------------------------------------------------------
  // A per-browser device id, kept in localStorage and sent with every join (`?device=`): two tabs
  // of this browser under one name are one person to the room (one entry in Online, no leave while
  // one is open).
  function deviceId() {
    try {
      let t = localStorage.getItem("wisp.token");
      if (!t) {
        const bytes = crypto.getRandomValues(new Uint8Array(12));
        t = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
        localStorage.setItem("wisp.token", t);
      }
      return t;
    } catch { return ""; }
  }
  const device = deviceId();

  // `#token=JWT` (--auth token): the fragment never reaches a server log or a Referer. The token
  // goes in Sec-WebSocket-Protocol, and the name is the token's (the server ignores any other).
  let token = new URLSearchParams(location.hash.slice(1)).get("token");
  const tokenName = (() => {
    try {
      const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))));
      return String(claims.name ?? claims.sub ?? "") || null;
    } catch { return null; }
  })();

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams();
    if (everWelcomed && epoch != null && lastId != null) {
      q.set("since", String(lastId));
      q.set("epoch", epoch);
    }
    if (device) q.set("device", device);
    const query = q.toString();
    return scheme + "//" + location.host + "/ws/" +
      encodeURIComponent(wanted.room) + "/" + encodeURIComponent(wanted.name) + (query ? "?" + query : "");
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    welcomed = false;
    setStatus("connecting", "connecting…");
    let sock;
    try { sock = token ? new WebSocket(wsUrl(), ["wisp", token]) : new WebSocket(wsUrl()); }
    catch (e) { scheduleReconnect(); return; }
    ws = sock;
    // A connection that hangs before its welcome (e.g. a server that stopped
    // accepting) is given up after a while and retried like any failure.
    setTimeout(() => { if (ws === sock && !welcomed) sock.close(); }, CONNECT_TIMEOUT_MS);
    sock.onmessage = (m) => { if (ws === sock) handle(m.data); };
    sock.onclose = (c) => {
      if (ws !== sock) return;                                  // an old socket we replaced
      ws = null;
      if (!wanted) return;                                      // the user left
      if (welcomed) addLine("notice", "Connection lost" + closeWhy(c) + ".");
      scheduleReconnect();
    };
  }

  function closeWhy(c) {
    switch (c.code) {
      case 1001: return " (server going away)";
      case 1008: return " (policy: too far behind)";
      case 1009: return " (message too large)";
      case 4001: return " (sign-in token expired)";
      default: return c.reason ? " (" + c.reason + ")" : "";
    }
  }

  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
    const delay = base * (1 - JITTER + 2 * JITTER * Math.random());
    attempt = Math.min(attempt + 1, 30);
    retryAt = Date.now() + delay;
    setStatus("reconnecting", "reconnecting");
    showCountdown();
    countdownTimer = setInterval(showCountdown, 100);
    retryTimer = setTimeout(connect, delay);
  }

  // Reconnect at once when the browser says the network is back.
  window.addEventListener("online", () => { if (wanted && retryTimer) { attempt = 0; connect(); } });

  function handle(data) {
    let ev;
    try { ev = JSON.parse(data); } catch { return; }
    if (!ev || typeof ev !== "object") return;
    switch (ev.type) {
      case "welcome": return onWelcome(ev);
      case "message":
        noteSkew(parseTs(ev.timestamp));
        stopTyping(String(ev.client_id ?? ""));
        return addMessage(ev);
      case "typing": {
        const who = String(ev.client_id ?? "");
        if (!who || myNames.has(who)) return;
        typers.set(who, Date.now() + TYPING_SHOW_MS);
        return renderTyping();
      }
      case "join": {
        const at = parseTs(ev.timestamp);
        noteSkew(at);
        const who = String(ev.client_id ?? "");
        if (!users.includes(who)) { users.push(who); renderUsers(); }
        return addLine("join", who + " joined", at);
      }
      case "leave": {
        const at = parseTs(ev.timestamp);
        noteSkew(at);
        const who = String(ev.client_id ?? "");
        const i = users.indexOf(who);
        if (i >= 0) { users.splice(i, 1); renderUsers(); }
        stopTyping(who);
        return addLine("leave", who + " left", at);
      }
      case "error": {
        const text = ev.code === "rate_limited"
          ? "Slow down: you are sending messages too fast, that one was not delivered."
          : "Error" + (ev.code ? " (" + ev.code + ")" : "") + ": " + String(ev.message ?? "");
        return addLine("error", text);
      }
    }
  }

  function onWelcome(ev) {
    const reconnect = everWelcomed;
    welcomed = true;
    everWelcomed = true;
    attempt = 0;
    if (Number.isFinite(Number(ev.ttl_s)) && Number(ev.ttl_s) > 0) setTtl(Number(ev.ttl_s) * 1000);
    myName = String(ev.client_id ?? wanted.name);
    myNames.add(myName);
    const newEpoch = ev.epoch == null ? null : String(ev.epoch);
    const recovered = ev.recovered !== false;
    if (!recovered || newEpoch !== epoch) {
      // Ids from another epoch mean nothing now, and a gap cannot be placed. What is shown
      // stays until its own expiry, marked as no longer held by the server (after a restart
      // the server has none of it); the history of the new epoch follows it.
      markStale();
      lastId = null;
    }
    epoch = newEpoch;
    for (const m of Array.isArray(ev.history) ? ev.history : []) addMessage(m);
    if (reconnect && !recovered) {
      addLine("notice", "Reconnected, but some messages may have been missed.");
    }
    for (const e of entries) schedule(e);                      // ttl may have changed
    users = Array.isArray(ev.users) ? ev.users.map(String) : [];
    renderUsers();
    const room = String(ev.room_id ?? wanted.room);
    el.roomTitle.textContent = "· " + room;
    document.title = room + " · Wisp";
    setStatus("online", "online as " + myName);
    el.roombarName.textContent = myName;
  }

  function join(room, name) {
    room = room.trim() || "general";
    name = name.trim() || "anonymous";
    if (ws) { const old = ws; ws = null; old.close(1000); }
    clearTimeout(retryTimer);
    retryTimer = null;
    wanted = { room, name };
    everWelcomed = false;
    myName = null;
    myNames.clear();
    epoch = null;
    lastId = null;
    attempt = 0;
    users = [];
    renderUsers();
    typers.clear();
    renderTyping();
    clearAll();
    try { localStorage.setItem("wisp.name", name); } catch {}
    const q = new URLSearchParams(location.search);
    q.set("room", room);
    q.delete("name");
    history.replaceState(null, "", "?" + q.toString());
    showForm(false);
    connect();
  }

  function leave() {
    wanted = null;
    clearTimeout(retryTimer);
    retryTimer = null;
    if (ws) { const old = ws; ws = null; old.close(1000); }
    users = [];
    renderUsers();
    setStatus("offline", "offline");
    el.roomTitle.textContent = "";
    document.title = "Wisp";
    showForm(true);
    // Left on purpose: a reload does not join again.
    const q = new URLSearchParams(location.search);
    q.delete("room");
    history.replaceState(null, "", q.toString() ? "?" + q.toString() : location.pathname);
    el.name.focus();
  }

  // ---- UI wiring -----------------------------------------------------------
  el.joinForm.addEventListener("submit", (e) => {
    e.preventDefault();
    join(el.room.value, el.name.value);
    el.message.focus();
  });
  el.leave.addEventListener("click", leave);
  el.switchRoom.addEventListener("click", () => {
    showForm(true);
    el.room.select();
    el.room.focus();
  });
  el.cancel.addEventListener("click", () => { showForm(false); el.message.focus(); });

  // Tell the room one is typing: at most one signal per TYPING_EVERY_MS, none for an empty field.
  el.message.addEventListener("input", () => {
    if (!el.message.value.trim() || !ws || ws.readyState !== WebSocket.OPEN || !welcomed) return;
    const now = Date.now();
    if (now - typingSentAt < TYPING_EVERY_MS) return;
    typingSentAt = now;
    ws.send(JSON.stringify({ type: "typing" }));
  });

  el.sendForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const content = el.message.value.trim();
    if (!content) return;
    if (!ws || ws.readyState !== WebSocket.OPEN || !welcomed) {
      addLine("error", "Not connected: the message was not sent.");
      return;
    }
    const frame = JSON.stringify({ content });
    if (new TextEncoder().encode(frame).length > MAX_SEND_BYTES) {
      addLine("error", "That message is too long to send.");
      return;
    }
    ws.send(frame);
    el.message.value = "";
  });

  // ---- sign-in token (--auth token) ----------------------------------------
  const authNote = $("auth-note");
  if (token) {
    el.name.readOnly = true;
    authNote.textContent = "Signed in as " + (tokenName || "(a token without a name)");
    authNote.hidden = false;
    // A fresh token put in the fragment (by whoever embeds the page) refreshes the open connection
    // before the old one expires; reconnections use it too.
    window.addEventListener("hashchange", () => {
      const fresh = new URLSearchParams(location.hash.slice(1)).get("token");
      if (!fresh || fresh === token) return;
      token = fresh;
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "refresh", token }));
    });
  } else {
    fetch("/healthz").then((r) => r.json()).then((h) => {
      if (h && h.auth === "token") {
        authNote.textContent = "This server only lets signed-in users chat: open the link with a token (…#token=…) that your service gave you.";
        authNote.hidden = false;
      }
    }).catch(() => {});
  }

  // Prefill from ?room=&name= (name falls back to the last one used). Join at once when both
  // are known: ?room= with ?name= or the saved name, so a reload of a joined page rejoins by
  // itself (join keeps ?room= in the address; leaving removes it).
  const q = new URLSearchParams(location.search);
  let savedName = "";
  try { savedName = localStorage.getItem("wisp.name") || ""; } catch {}
  el.room.value = q.get("room") || "";
  el.name.value = q.get("name") || savedName;
  if (token) el.name.value = tokenName || "";
  setStatus("offline", "offline");
  showForm(true);
  if (el.room.value.trim() && el.name.value.trim()) join(el.room.value, el.name.value);
  else (el.name.value ? el.room : el.name).focus();
  // The history's lifetime, for the empty log's text before joining.
  fetch("/rooms/general/messages?limit=1", { headers: { Accept: "application/json" } })
    .then((r) => (r.ok ? r.json() : null))
    .then((v) => { if (v && Number(v.ttl_s) > 0 && !everWelcomed) setTtl(Number(v.ttl_s) * 1000); })
    .catch(() => {});
})();
