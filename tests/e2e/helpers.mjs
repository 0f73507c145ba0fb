// Shared by the browser test files: the daemon under test, polling, the browser.
//
//   WISP_BIN       the daemon (default: target/debug/wisp of this repository)
//   WISP_CHROMIUM  the browser (default: /usr/bin/chromium)

import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.WISP_BIN
  ? path.resolve(process.env.WISP_BIN)                 // relative to the working directory
  : path.resolve(here, '../../target/debug/wisp');   // relative to this file
export const CHROMIUM = process.env.WISP_CHROMIUM || '/usr/bin/chromium';

/** Polls `fn` until it stops throwing (or returns a value), for at most `timeout` ms. */
export async function eventually(fn, { timeout = 5000, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() >= deadline) {
        err.message = `timed out after ${timeout} ms waiting for ${what}: ${err.message}`;
        throw err;
      }
    }
    await sleep(interval);
  }
}

/**
 * Starts the daemon with `args` (after `--bind 127.0.0.1:0`) and resolves once it logs the
 * address it listens on: `{ proc, port, log, exited, url }`. `WISP_*` variables of the caller
 * are not passed on.
 */
export function startDaemon(args = [], { bind = '127.0.0.1:0' } = {}) {
  return new Promise((resolve, reject) => {
    if (!fs.existsSync(BIN)) {
      reject(new Error(`no daemon at ${BIN}: run \`cargo build\` first or set WISP_BIN`));
      return;
    }
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('WISP_')));
    const proc = spawn(BIN, ['--bind', bind, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
    const d = { proc, port: null, log: '', exited: false, url: (p = '/') => `http://127.0.0.1:${d.port}${p}` };
    proc.on('exit', () => { d.exited = true; });
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`daemon did not say where it listens within 10 s; output:\n${d.log}`));
    }, 10000);
    const onData = (chunk) => {
      d.log += chunk.toString();
      if (d.log.length > 64 * 1024) d.log = d.log.slice(-32 * 1024);
      const m = /listening on http:\/\/[^:\s]+:(\d+)/.exec(d.log);
      if (m && d.port == null) {
        d.port = Number(m[1]);
        clearTimeout(timer);
        resolve(d);
      }
    };
    proc.stderr.on('data', onData);
    proc.stdout.on('data', onData);
    proc.on('error', (err) => { clearTimeout(timer); reject(err); });
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (d.port == null) reject(new Error(`daemon exited (${code ?? signal}) before listening; output:\n${d.log}`));
    });
  });
}

/** Stops the daemon: SIGTERM (graceful), SIGKILL if it is still there after 7 s. */
export async function stopDaemon(d, signal = 'SIGTERM') {
  if (!d || d.exited) return;
  const exited = new Promise((resolve) => d.proc.once('exit', resolve));
  try { process.kill(d.proc.pid, signal); } catch { /* already gone */ }
  const ok = await Promise.race([exited.then(() => true), sleep(7000).then(() => false)]);
  if (!ok) {
    process.kill(d.proc.pid, 'SIGKILL');
    await exited;
  }
}

/** Headless Chromium, as every browser test runs it. */
export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      // Pages answered by the test (route.fulfill) count as public to Chromium, which then
      // blocks their sockets to 127.0.0.1 as local-network access.
      '--disable-features=LocalNetworkAccessChecks'],
  });
}
