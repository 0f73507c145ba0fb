// node-peer: a comparison server for the Wisp benchmarks.
//
// The same endpoints and fan-out semantics as Wisp (SPEC §3, §4.1, §4.2) on
// Node.js + the `ws` package, written the way its README recommends: one
// http.Server, a `noServer` WebSocketServer, routing by path in the
// 'upgrade' handler, permessage-deflate off unless --deflate, one
// event-loop thread (like Wisp's single reactor).
//
// Broadcast strategy (--broadcast MODE, default "cork"); every mode is used
// for every frame the server sends to a socket (echo replies included):
//   cork   - the frame (header + payload) is built ONCE with ws's exported
//            `Sender.frame` and that same Buffer is written to every
//            recipient's socket; each socket is corked on its first write in
//            an event-loop turn and uncorked in a setImmediate, so all it got
//            during the turn leaves in one writev. This is the per-loop-turn
//            write batching that Wisp does (SPEC §1), with documented Node
//            APIs (socket.cork/uncork).
//   frame  - the same shared prebuilt frame, written at once (one write
//            syscall per frame per recipient).
//   buffer - the payload is made a Buffer once and passed to
//            `client.send(buf, {binary:false})`: ws allocates a header per
//            recipient and corks header + shared payload (ws README style).
//   string - `client.send(str)`: the naive version; the string is UTF-8
//            encoded again for every recipient.
// Writing prebuilt frames straight to ws._socket is safe because
// permessage-deflate is off (without --deflate), so ws's Sender never queues
// a frame and the order of frames on a socket is kept.
// Measured with bench.mjs on the 2-core dev box (64 clients on /ws, 200
// 32-byte messages each, window 4, 819,200 deliveries; server CPU per
// delivery): cork ~0.64 us, frame ~4.6 us, buffer ~5.8 us, string ~6.5 us.
// Without batching, node pays one loopback write per delivery, which is
// what dominates. "cork" is the fastest honest version, so it is the default.
//
// --deflate: permessage-deflate on, ws's own way (`perMessageDeflate` in
// the WebSocketServer options): each `client.send` compresses for that one
// recipient, on libuv's thread pool (ws's default concurrencyLimit of 10
// compressions in flight), with the context takeover the client asks for.
// Prebuilt frames cannot be written to the socket then (ws's Sender queues
// messages while it compresses, and a frame written around it would jump
// the queue), so --deflate implies --broadcast buffer: one payload Buffer
// shared by every `send`, framed and compressed per recipient. ws offers no
// way to compress a broadcast once. Threshold and level default to Wisp's
// (--deflate-min-bytes 256, --deflate-level 2) so that what differs is where
// compression happens, not how much of it; ws's own defaults are 1024 and
// zlib's 6.
//
// Usage: node server.mjs [ADDR | --bind ADDR] [--broadcast cork|frame|buffer|string]
//                        [--deflate [--deflate-threshold N] [--deflate-level N]]

import http from 'node:http';
import { WebSocketServer, WebSocket, Sender } from 'ws';

const TTL_S = 60;
const EPOCH = 'x';

let bind = '127.0.0.1:0';
let mode;
let deflate = false;
let threshold = 256;
let level = 2;
const argv = process.argv.slice(2);
const USAGE =
  'usage: node server.mjs [ADDR | --bind ADDR] [--broadcast cork|frame|buffer|string] ' +
  '[--deflate [--deflate-threshold N] [--deflate-level N]]';
function int(name, v, lo, hi) {
  const n = Number(v);
  if (!Number.isInteger(n) || n < lo || n > hi) {
    console.error(`node-peer: bad ${name} ${v}`);
    process.exit(2);
  }
  return n;
}
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--bind') bind = argv[++i];
  else if (a === '--broadcast') mode = argv[++i];
  else if (a === '--deflate') deflate = true;
  else if (a === '--deflate-threshold') threshold = int(a, argv[++i], 0, 1 << 30);
  else if (a === '--deflate-level') level = int(a, argv[++i], 0, 9);
  else if (a === '-h' || a === '--help') {
    console.log(USAGE);
    process.exit(0);
  } else if (!a.startsWith('-')) bind = a;
  else {
    console.error(`node-peer: unknown option ${a}`);
    process.exit(2);
  }
}
mode ??= deflate ? 'buffer' : 'cork';
if (!['frame', 'cork', 'buffer', 'string'].includes(mode)) {
  console.error(`node-peer: bad --broadcast ${mode}`);
  process.exit(2);
}
if (deflate && (mode === 'frame' || mode === 'cork')) {
  console.error(`node-peer: --deflate needs --broadcast buffer or string (ws must frame each send)`);
  process.exit(2);
}
const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(bind);
if (!m) {
  console.error(`node-peer: bad bind address ${bind}`);
  process.exit(2);
}
const [host, port] = [m[1], Number(m[2])];

// ------------------------------------------------------------- broadcasting

const FRAME_OPTS = { fin: true, rsv1: false, opcode: 0x1, mask: false, readOnly: false };

const BINARY_OPTS = { ...FRAME_OPTS, opcode: 0x2 };

/** Prepare a payload (string or Buffer) once for many recipients. */
function prepare(text, binary = false) {
  if (mode === 'string') return binary || typeof text === 'string' ? text : text.toString();
  const buf = typeof text === 'string' ? Buffer.from(text) : text;
  if (mode === 'buffer') return buf;
  const parts = Sender.frame(buf, binary ? BINARY_OPTS : FRAME_OPTS);
  return parts.length === 1 ? parts[0] : Buffer.concat(parts);
}

/** Sockets corked during this event-loop turn (mode "cork"). */
const corked = new Set();
function uncorkAll() {
  for (const s of corked) s.uncork();
  corked.clear();
}

/** Send a prepared payload to one client. */
function deliver(ws, prepared, binary = false) {
  if (ws.readyState !== WebSocket.OPEN) return;
  if (mode === 'frame') ws._socket.write(prepared);
  else if (mode === 'cork') {
    const s = ws._socket;
    if (!corked.has(s)) {
      if (corked.size === 0) setImmediate(uncorkAll);
      s.cork();
      corked.add(s);
    }
    s.write(prepared);
  } else ws.send(prepared, { binary });
}

// ------------------------------------------------------------- state

const globalClients = new Set();
/** room id -> { nextId, members: Map<WebSocket, name> } */
const rooms = new Map();

function timestamp() {
  // RFC 3339 UTC with microseconds.
  const t = performance.timeOrigin + performance.now();
  const us = Math.floor(t * 1000) % 1000;
  return new Date(Math.floor(t)).toISOString().slice(0, -1) + String(us).padStart(3, '0') + 'Z';
}

function cleanName(raw, dflt) {
  let s;
  try {
    s = decodeURIComponent(raw);
  } catch {
    s = raw;
  }
  // eslint-disable-next-line no-control-regex
  s = s.replace(/[\u0000-\u001f\u007f-\u009f/]/g, '').trim();
  s = Array.from(s).slice(0, 64).join('');
  return s === '' ? dflt : s;
}

function route(url) {
  const path = url.split('?', 1)[0];
  if (path === '/echo') return { kind: 'echo' };
  if (path === '/ws') return { kind: 'global' };
  if (path.startsWith('/ws/')) {
    const segs = path.slice(4).split('/');
    if (segs.length === 2) {
      return { kind: 'room', room: cleanName(segs[0], 'general'), client: cleanName(segs[1], 'anonymous') };
    }
  }
  return null;
}

// ------------------------------------------------------------- endpoints

function onEcho(ws) {
  ws.on('message', (data, isBinary) => deliver(ws, prepare(data, isBinary), isBinary));
}

function onGlobal(ws) {
  globalClients.add(ws);
  ws.on('message', (data, isBinary) => {
    if (isBinary) return ws.close(1003);
    const p = prepare(data); // data is the received Buffer: sent unchanged
    for (const c of globalClients) deliver(c, p);
  });
  ws.on('close', () => globalClients.delete(ws));
}

function roomBroadcast(room, text, except) {
  const p = prepare(text);
  for (const c of room.members.keys()) if (c !== except) deliver(c, p);
}

function onRoom(ws, roomId, wanted) {
  let room = rooms.get(roomId);
  if (!room) rooms.set(roomId, (room = { nextId: 0, members: new Map() }));
  const taken = new Set(room.members.values());
  let name = wanted;
  for (let n = 2; taken.has(name); n++) name = `${wanted}#${n}`;
  room.members.set(ws, name);
  ws.send(
    JSON.stringify({
      type: 'welcome',
      room_id: roomId,
      client_id: name,
      users: [...room.members.values()],
      history: [],
      ttl_s: TTL_S,
      epoch: EPOCH,
      recovered: true,
    }),
  );
  roomBroadcast(room, JSON.stringify({ type: 'join', room_id: roomId, client_id: name, timestamp: timestamp() }), ws);

  ws.on('message', (data, isBinary) => {
    if (isBinary) return ws.close(1003);
    const text = data.toString();
    let content = text;
    if (text.trimStart().startsWith('{')) {
      let v;
      try {
        v = JSON.parse(text);
      } catch {
        v = undefined;
      }
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
        if (typeof v.content !== 'string') {
          ws.send('{"type":"error","code":"bad_request","message":"JSON object needs a string content"}');
          return;
        }
        content = v.content;
      }
    }
    content = content.trim();
    if (content === '') return;
    room.nextId += 1;
    const frame = JSON.stringify({
      type: 'message',
      id: room.nextId,
      room_id: roomId,
      client_id: name,
      content,
      timestamp: timestamp(),
    });
    roomBroadcast(room, frame, null); // encoded once, shared by every member
  });

  ws.on('close', () => {
    room.members.delete(ws);
    if (room.members.size === 0) {
      if (rooms.get(roomId) === room) rooms.delete(roomId);
    } else {
      roomBroadcast(room, JSON.stringify({ type: 'leave', room_id: roomId, client_id: name, timestamp: timestamp() }), null);
    }
  });
}

// ------------------------------------------------------------- server

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: deflate ? { threshold, zlibDeflateOptions: { level } } : false,
  clientTracking: false,
});
const server = http.createServer((req, res) => {
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found\n');
});

server.on('upgrade', (req, socket, head) => {
  const r = route(req.url);
  if (!r) {
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
    return;
  }
  socket.on('error', () => {});
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
    if (r.kind === 'echo') onEcho(ws);
    else if (r.kind === 'global') onGlobal(ws);
    else onRoom(ws, r.room, r.client);
  });
});

server.listen(port, host, () => {
  const a = server.address();
  const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  const z = deflate ? `, permessage-deflate threshold=${threshold} level=${level}` : '';
  console.log(`listening on http://${h}:${a.port}/ (node ws, broadcast=${mode}${z})`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
