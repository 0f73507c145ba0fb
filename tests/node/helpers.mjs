// Start the real wisp binary for the node:test suites.
//
// The binary comes from $WISP_BIN (scripts/test.sh sets it), else
// target/release/wisp, else target/debug/wisp. It listens on 127.0.0.1:0 and
// the port is read from its log line `listening on http://127.0.0.1:PORT/`.
// stop() sends SIGTERM and SIGKILLs after 8 s.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import WebSocket from 'ws';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const LISTEN_RE = /listening on http:\/\/[^:\s]+:(\d+)/;
export const TIMEOUT_MS = 5000;

export function wispBin() {
  const candidates = process.env.WISP_BIN
    ? [process.env.WISP_BIN]
    : [path.join(REPO, 'target/release/wisp'), path.join(REPO, 'target/debug/wisp')];
  const found = candidates.find((c) => existsSync(c));
  if (!found) {
    throw new Error(`wisp binary not found (tried ${candidates.join(', ')}); build it or set WISP_BIN`);
  }
  return found;
}

export async function startWisp(...args) {
  const env = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('WISP_') || k === 'WISP_BIN'));
  const child = spawn(wispBin(), ['--bind', '127.0.0.1:0', ...args], {
    env, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`wisp printed no listening line within 10 s:\n${log}`));
    }, 10000);
    const onData = (chunk) => {
      log += chunk.toString();
      const m = LISTEN_RE.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`wisp exited (${code ?? sig}) before listening:\n${log}`));
    });
  });
  const base = `127.0.0.1:${port}`;
  return {
    port,
    http: `http://${base}`,
    url: (p) => `ws://${base}${p}`,
    log: () => log,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 8000);
      await exited;
      clearTimeout(t);
    },
  };
}

// Reject if `promise` does not settle within ms.
export function within(promise, ms = TIMEOUT_MS, what = 'operation') {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

// Open a client; its inbox is attached before the handshake ends, so a frame
// sent right after the 101 (a room's welcome) is never missed.
export async function open(url, opts = {}) {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 0, ...opts });
  ws.box = inbox(ws);
  await within(once(ws, 'open'), TIMEOUT_MS, `open ${url}`);
  return ws;
}

// A queue of received messages, so none is lost between awaits.
export function inbox(ws) {
  const queue = [];
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const m = { data, isBinary };
    const w = waiters.shift();
    if (w) w(m); else queue.push(m);
  });
  return {
    next(ms = TIMEOUT_MS) {
      if (queue.length) return Promise.resolve(queue.shift());
      return within(new Promise((resolve) => waiters.push(resolve)), ms, 'next message');
    },
    async nextJson(ms = TIMEOUT_MS) {
      const m = await this.next(ms);
      if (m.isBinary) throw new Error('expected a text frame');
      return JSON.parse(m.data.toString());
    },
  };
}

// Resolve with [code, reason] when ws closes.
export function closed(ws, ms = TIMEOUT_MS) {
  return within(new Promise((resolve) => {
    ws.once('close', (code, reason) => resolve([code, reason.toString()]));
  }), ms, 'close');
}
