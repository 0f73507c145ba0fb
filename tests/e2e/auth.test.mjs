// The browser client under `--auth token` (docs/operations.md, "Security model"): signed in from
// `#token=`, the token sent as a subprotocol, a plain note without one, and a refresh when a fresh
// token is put in the fragment. Tokens are minted with `wisp token`.
//
//   cargo build && (cd tests/e2e && npm ci && npm test)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BIN, eventually, startDaemon, stopDaemon, launchChromium } from './helpers.mjs';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wisp-e2e-auth-'));
const SECRET = path.join(dir, 'secret');
fs.writeFileSync(SECRET, 'e2e-secret-e2e-secret-e2e-secret-0123456789\n');

let daemon = null;
let browser = null;
const pageErrors = [];

function mint(sub, ttl) {
  return execFileSync(BIN, ['token', '--secret-file', SECRET, '--sub', sub, '--rooms', 'lobby',
    '--ttl', String(ttl)], { encoding: 'utf8' }).trim();
}

async function open(fragment) {
  const context = await browser.newContext();
  // Remember the subprotocols each socket offered and the URL it used.
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    const t = (window.__test = { opened: [] });
    window.WebSocket = class extends Native {
      constructor(url, protocols) {
        super(url, protocols);
        t.opened.push({ url: String(url), protocols: protocols ?? null });
      }
    };
  });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(err.message));
  await page.goto(`http://127.0.0.1:${daemon.port}/?room=lobby${fragment}`);
  return page;
}

const note = (page) => page.getByRole('note');
const status = (page) => page.locator('#status').textContent();

before(async () => {
  daemon = await startDaemon(['--auth', 'token', '--token-secret-file', SECRET]);
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await stopDaemon(daemon);
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a token in the fragment signs in, travels as a subprotocol, and names the user', async () => {
  const token = mint('alice', 600);
  const page = await open(`#token=${token}`);
  await eventually(async () => assert.match(await status(page), /online as alice/), { what: 'online' });
  assert.match(await note(page).textContent(), /Signed in as alice/);
  assert.equal(await page.getByLabel('Name', { exact: true }).inputValue(), 'alice');
  const opened = await page.evaluate(() => window.__test.opened);
  assert.deepEqual(opened[0].protocols, ['wisp', token]);
  assert.ok(!opened[0].url.includes(token), 'the token must not be in the URL');
  await page.context().close();
});

test('without a token the page says one is needed', async () => {
  const page = await open('');
  await eventually(async () => assert.match(await note(page).textContent(), /signed-in users/),
    { what: 'the note' });
  await page.context().close();
});

test('a fresh token in the fragment refreshes the connection before it expires', async () => {
  const page = await open(`#token=${mint('bob', 2)}`);
  await eventually(async () => assert.match(await status(page), /online as bob/), { what: 'online' });
  await page.evaluate((t) => { location.hash = `token=${t}`; }, mint('bob', 600));
  await sleep(3500);
  const sockets = await page.evaluate(() => window.__test.opened.length);
  assert.equal(sockets, 1, 'the page reconnected: the refresh did not keep the connection');
  assert.match(await status(page), /online as bob/);
  await page.context().close();
});

test('no script errors', () => {
  assert.deepEqual(pageErrors, []);
});
