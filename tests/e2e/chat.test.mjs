// End-to-end tests of the browser client (SPEC §5) against the real daemon,
// driven in headless Chromium through playwright-core.
//
//   cargo build && (cd tests/e2e && npm ci && npm test)
//
// Environment:
//   WISP_BIN         the daemon to start (default: target/debug/wisp of this repository)
//   WISP_CHROMIUM    the browser (default: /usr/bin/chromium)
//   WISP_SCREENSHOT  set to 1 to write docs/screenshot.png and docs/screenshot-dark.png

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import fs from 'node:fs';
import path from 'node:path';
import { eventually, startDaemon, stopDaemon, launchChromium } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SCREENSHOT = path.resolve(here, '../../docs/screenshot.png');
const TTL_S = 4;
const DAEMON_ARGS = ['--history-ttl', String(TTL_S)];
const ROOM = `e2e-${process.pid}`;
const XSS = '<b>x</b><img src=x onerror=alert(1)>';

let daemon = null;      // the running daemon (helpers.mjs startDaemon)
let browser = null;
const pages = {};       // name -> page
const pageErrors = [];
const dialogs = [];

// ---- helpers -------------------------------------------------------------

const baseUrl = () => `http://127.0.0.1:${daemon.port}/`;
const log = (page) => page.getByRole('log', { name: 'Messages' });
const online = (page) => page.getByRole('list', { name: 'Online' });
const onlineNames = async (page) => (await online(page).getByRole('listitem').allTextContents())
  .map((s) => s.replace(/\s*\(you\)\s*$/, '').trim());
const statusText = (page) => page.locator('#status').textContent();
const message = (page, text) => log(page).locator('.msg', { hasText: text });

async function waitStatus(page, re, timeout = 5000) {
  await eventually(async () => assert.match(await statusText(page), re), { timeout, what: `status ${re}` });
}

/** Opens a page in its own browser context (its own storage) and joins ROOM as `name`. */
async function openAs(name, key = name, { room = ROOM, colorScheme = 'light' } = {}) {
  const context = await browser.newContext({ viewport: { width: 820, height: 620 }, colorScheme });
  // Test instrumentation: remember every socket and the URL it was opened with,
  // and allow the test to make new connections fail (a network outage).
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    const t = (window.__test = { sockets: [], urls: [], block: false });
    window.WebSocket = class extends Native {
      constructor(url, protocols) {
        super(t.block ? 'ws://127.0.0.1:9/' : url, protocols);
        t.urls.push(String(url));
        t.sockets.push(this);
      }
    };
  });
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${key}: ${err.message}`));
  page.on('dialog', (dlg) => { dialogs.push(`${key}: ${dlg.message()}`); dlg.dismiss().catch(() => {}); });
  await page.goto(baseUrl());
  await page.getByLabel('Name', { exact: true }).fill(name);
  await page.getByLabel('Room', { exact: true }).fill(room);
  await page.getByRole('button', { name: 'Join' }).click();
  await waitStatus(page, /online/);
  pages[key] = page;
  return page;
}

async function say(page, text) {
  const field = page.getByRole('textbox', { name: 'Message', exact: true });
  await field.fill(text);
  await field.press('Enter');
}

// ---- lifecycle -----------------------------------------------------------

before(async () => {
  daemon = await startDaemon(DAEMON_ARGS);
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (daemon && !daemon.exited) {
    try { process.kill(daemon.proc.pid, 'SIGKILL'); } catch { /* already gone */ }
  }
});

// ---- tests (run in order, sharing the daemon and the pages) --------------

test('the page is served at / with labelled controls', async () => {
  const res = await fetch(baseUrl());
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/html/);
  const html = await res.text();
  assert.doesNotMatch(html, /<(script|link)[^>]+(src|href)=["']?https?:/i, 'no external resources');
});

test('two people join the same room and see each other online', async () => {
  const alice = await openAs('alice');
  const bob = await openAs('bob');
  for (const page of [alice, bob]) {
    await eventually(async () => assert.deepEqual((await onlineNames(page)).sort(), ['alice', 'bob']),
      { what: 'alice and bob online' });
    await eventually(async () => assert.match(await statusText(page), /online/));
  }
  await eventually(async () => assert.equal(await log(alice).getByText('bob joined').count(), 1),
    { what: 'a join line for bob' });
});

test('a message reaches both, marked as own for the sender', async () => {
  const { alice, bob } = pages;
  await say(alice, 'hello from alice');
  for (const page of [alice, bob]) {
    await eventually(async () => assert.equal(await message(page, 'hello from alice').count(), 1),
      { what: 'the message' });
  }
  const mine = message(alice, 'hello from alice');
  assert.match(await mine.getAttribute('class'), /\bmine\b/);
  assert.match(await mine.textContent(), /\(you\)/);
  const theirs = message(bob, 'hello from alice');
  assert.doesNotMatch(await theirs.getAttribute('class'), /\bmine\b/);
  assert.doesNotMatch(await theirs.textContent(), /\(you\)/);
  assert.match(await theirs.textContent(), /alice/);
  assert.equal(await alice.getByRole('textbox', { name: 'Message', exact: true }).inputValue(), '', 'the field is cleared after sending');
});

test('Chromium negotiates permessage-deflate and a large message round-trips compressed', async () => {
  // The chat page's own socket.
  const { alice } = pages;
  const chat = await alice.evaluate(() => window.__test.sockets.at(-1).extensions);
  assert.match(chat, /^permessage-deflate/);
  // A socket of its own, in a page without the test's socket instrumentation.
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(baseUrl());
  const wsUrl = baseUrl().replace(/^http/, 'ws') + 'echo';
  const { extensions, same } = await page.evaluate(async (url) => {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    // About 40 KB: under the default --max-message-bytes (64 KiB).
    const text = JSON.stringify(Array.from({ length: 1000 }, (_, i) => ({ id: i, content: 'hello from chromium' })));
    const echoed = new Promise((resolve, reject) => {
      ws.onmessage = (e) => resolve(e.data);
      ws.onclose = (e) => reject(new Error(`closed ${e.code} ${e.reason}`));
    });
    ws.send(text);
    const got = await echoed;
    ws.close(1000);
    return { extensions: ws.extensions, same: got === text };
  }, wsUrl);
  await context.close();
  assert.match(extensions, /^permessage-deflate/);
  assert.match(extensions, /client_no_context_takeover/);
  assert.ok(same, 'the echo is the message sent');
  const metrics = await (await fetch(baseUrl() + 'metrics')).text();
  const value = (name) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(metrics)?.[1]);
  assert.ok(value('wisp_inflate_bytes_in_total') > 0, 'the browser sent it compressed');
  assert.ok(value('wisp_deflate_bytes_out_total') > 0, 'wisp sent compressed frames back');
  assert.ok(value('wisp_deflate_negotiated_total') >= 3, 'both pages and the echo socket negotiated it');
});

test('screenshot of a short conversation', { skip: process.env.WISP_SCREENSHOT !== '1' }, async () => {
  // Its own room, so the picture shows a join line and tidy names; one page
  // light and one dark (prefers-color-scheme).
  const maya = await openAs('maya', 'maya', { room: 'launch' });
  const theo = await openAs('theo', 'theo', { room: 'launch', colorScheme: 'dark' });
  const lines = [
    [theo, 'hi maya! is the deploy done?'],
    [maya, 'yes, rolled out to all regions'],
    [theo, 'nice. these messages fade away after a while, by the way'],
    [maya, 'which is exactly why I like it here'],
  ];
  for (const [from, text] of lines) {
    await say(from, text);
    for (const page of [maya, theo]) {
      await eventually(async () => assert.equal(await message(page, text).count(), 1));
    }
  }
  await sleep(300);
  fs.mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await maya.screenshot({ path: SCREENSHOT });
  await theo.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-dark.png') });
  for (const key of ['maya', 'theo']) {
    await pages[key].context().close();
    delete pages[key];
  }
});

test(`a message fades and vanishes at its timestamp + ttl (${TTL_S} s)`, async () => {
  const { alice, bob } = pages;
  const sent = Date.now();
  await say(alice, 'this will vanish');
  await eventually(async () => assert.equal(await message(bob, 'this will vanish').count(), 1));
  await sleep(sent + 2000 - Date.now());
  for (const page of [alice, bob]) {
    assert.equal(await message(page, 'this will vanish').count(), 1, 'still there at 2 s');
  }
  await sleep(sent + 3500 - Date.now());
  const opacity = Number(await message(bob, 'this will vanish')
    .evaluate((e) => getComputedStyle(e).opacity));
  assert.ok(opacity > 0 && opacity < 0.95, `fading at 3.5 s (opacity ${opacity})`);
  for (const page of [alice, bob]) {
    await eventually(async () => assert.equal(await message(page, 'this will vanish').count(), 0),
      { timeout: Math.max(0, sent + 5500 - Date.now()), what: 'the message to be gone' });
  }
});

test('a second "alice" gets a distinct name; leaving shrinks the online list', async () => {
  const { alice } = pages;
  const twin = await openAs('alice', 'twin');
  const twinName = (await twin.locator('#online li.me').textContent()).replace(/\s*\(you\)\s*$/, '');
  assert.notEqual(twinName, 'alice');
  assert.ok(twinName.startsWith('alice'), `de-duplicated name ${twinName}`);
  await eventually(async () => assert.deepEqual((await onlineNames(alice)).sort(), ['alice', 'bob', twinName].sort()),
    { what: 'three online' });

  // Own messages are recognised by the name in use, not the one typed.
  await say(twin, 'hi from the other alice');
  await eventually(async () => assert.equal(await message(alice, 'hi from the other alice').count(), 1));
  assert.match(await message(twin, 'hi from the other alice').getAttribute('class'), /\bmine\b/);
  assert.doesNotMatch(await message(alice, 'hi from the other alice').getAttribute('class'), /\bmine\b/);

  await twin.context().close();
  delete pages.twin;
  await eventually(async () => assert.equal(await log(alice).getByText(`${twinName} left`).count(), 1),
    { what: 'a leave line' });
  await eventually(async () => assert.deepEqual((await onlineNames(alice)).sort(), ['alice', 'bob']),
    { what: 'two online' });
});

test('text from others is shown as text, never as HTML', async () => {
  const { alice, bob } = pages;
  await say(bob, XSS);
  const shown = log(alice).locator('.msg .content', { hasText: 'onerror' });
  await eventually(async () => assert.equal(await shown.count(), 1), { what: 'the message' });
  assert.equal(await shown.textContent(), XSS);
  assert.equal(await log(alice).locator('img, b').count(), 0);
  assert.equal(await log(bob).locator('img, b').count(), 0);
  await sleep(200);
  assert.deepEqual(dialogs, []);
});

test('after a short outage the page resumes with ?since= and epoch and misses nothing', async () => {
  const { alice, bob } = pages;
  const before = await alice.evaluate(() => window.__test.urls.length);
  await alice.evaluate(() => { window.__test.block = true; window.__test.sockets.at(-1).close(); });
  await waitStatus(alice, /reconnecting/);
  await eventually(async () => assert.deepEqual(await onlineNames(bob), ['bob']), { what: 'alice gone for bob' });
  await say(bob, 'said during the outage');
  await eventually(async () => assert.equal(await message(bob, 'said during the outage').count(), 1));
  await alice.evaluate(() => { window.__test.block = false; });
  await waitStatus(alice, /online/, 8000);
  await eventually(async () => assert.equal(await message(alice, 'said during the outage').count(), 1),
    { what: 'the missed message' });
  const urls = await alice.evaluate((n) => window.__test.urls.slice(n), before);
  assert.match(urls.at(-1), /\?since=\d+&epoch=[^&]+/, `resume URL ${urls.at(-1)}`);
  assert.equal(await log(alice).getByText(/may have been missed/).count(), 0, 'recovered: true, no notice');
  await sleep(300);
  assert.equal(await message(alice, 'said during the outage').count(), 1, 'no duplicate');
});

test('the page survives a restart of the daemon', async () => {
  const { alice, bob } = pages;
  const port = daemon.port;
  await say(alice, 'before the restart');
  await eventually(async () => assert.equal(await message(bob, 'before the restart').count(), 1));

  await stopDaemon(daemon);
  for (const page of [alice, bob]) await waitStatus(page, /reconnecting in \d+(\.\d)? s/);

  daemon = await startDaemon(DAEMON_ARGS, { bind: `127.0.0.1:${port}` });
  for (const page of [alice, bob]) await waitStatus(page, /online/, 15000);
  // A new daemon is a new epoch: the page says something may be missing.
  await eventually(async () => assert.equal(await log(alice).getByText(/may have been missed/).count(), 1),
    { what: 'the recovered: false notice' });
  await eventually(async () => assert.deepEqual((await onlineNames(alice)).sort(), ['alice', 'bob']));

  await say(alice, 'after the restart');
  for (const page of [alice, bob]) {
    await eventually(async () => assert.equal(await message(page, 'after the restart').count(), 1),
      { what: 'delivery after the restart' });
  }
});

test('no script errors on any page', () => {
  assert.deepEqual(pageErrors, []);
});
