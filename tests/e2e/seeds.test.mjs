// The seed apps' own clients against Wisp, unchanged (docs/protocol.md, "Compatibility mode"):
//
// - the rooms app's client (seeds/rooms-app.html, from seed 001) against `wisp --compat fastapi`:
//   two people see each other online, talk, see the system lines, and no empty card is drawn;
// - the FastAPI documentation's page (seeds/fastapi-docs.html, seed 003) through /ws/{client_id};
// - the first app's Vue client (seeds/vue-chat.html + Chat.js, seed 000) in the default mode.
//
// Each page is served by the test itself at the daemon's own origin (Playwright answers the
// request from the file), so a page that connects to `location.host` reaches the daemon; the pages
// that hard-code localhost:8000 are pointed at the daemon by an init script that rewrites that
// address in `WebSocket` and `fetch`, leaving the seed code as it is.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import fs from 'node:fs';
import path from 'node:path';
import { eventually, startDaemon, stopDaemon, launchChromium } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SEEDS = path.join(here, 'seeds');
const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8' };

let compat = null;   // wisp --compat fastapi
let plain = null;    // wisp, default mode
let browser = null;
const pageErrors = [];

before(async () => {
  [compat, plain] = await Promise.all([startDaemon(['--compat', 'fastapi']), startDaemon()]);
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await Promise.all([stopDaemon(compat), stopDaemon(plain)]);
});

/**
 * A page of its own context showing seeds/`file`, served at `daemon`'s origin under /seed/;
 * `localhost:8000` and `127.0.0.1:8000` in WebSocket and fetch URLs lead to `daemon`.
 */
async function openSeed(daemon, file, key) {
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  await context.route(daemon.url('/seed/**'), (route) => {
    const name = path.basename(new URL(route.request().url()).pathname);
    const full = path.join(SEEDS, name);
    if (!fs.existsSync(full)) return route.fulfill({ status: 404, body: 'no such seed file' });
    return route.fulfill({ status: 200, contentType: TYPES[path.extname(name)], body: fs.readFileSync(full) });
  });
  await context.addInitScript((host) => {
    const retarget = (url) => String(url).replace(/\/\/(localhost|127\.0\.0\.1):8000\b/, `//${host}`);
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
      constructor(url, protocols) { super(retarget(url), protocols); }
    };
    const nativeFetch = window.fetch.bind(window);
    window.fetch = (input, init) => nativeFetch(typeof input === 'string' ? retarget(input) : input, init);
  }, `127.0.0.1:${daemon.port}`);
  const page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(`${key}: ${err.message}`));
  await page.goto(daemon.url(`/seed/${file}`));
  return page;
}

// ---- the rooms app (seed 001), --compat fastapi ---------------------------------------

const ROOM = `lobby-${process.pid}`;
const cards = (page) => page.locator('#messages article.message');
const card = (page, text) => page.locator('#messages article.message', { hasText: text });
const users = async (page) => (await page.locator('#usersList li').allTextContents()).sort();

/** Every card the page drew has text: the test fails on any empty card. */
async function assertNoEmptyCard(page) {
  const texts = await page.locator('#messages article.message .content').allTextContents();
  assert.ok(texts.length > 0, 'some cards were drawn');
  assert.deepEqual(texts.filter((t) => t.trim() === ''), [], `empty cards among ${JSON.stringify(texts)}`);
}

async function joinRooms(name) {
  const page = await openSeed(compat, 'rooms-app.html', name);
  await page.locator('#username').fill(name);
  await page.locator('#room').fill(ROOM);
  await page.locator('#connectBtn').click();
  await eventually(async () => assert.equal(await page.locator('#roomTitle').textContent(), `Room: ${ROOM}`),
    { what: `${name} connected` });
  return page;
}

async function sayRooms(page, text) {
  await page.locator('#messageInput').fill(text);
  await page.locator('#messageInput').press('Enter');
}

test('rooms app: two people see each other online, talk, and see the system lines', async () => {
  const alice = await joinRooms('alice');
  await eventually(async () => assert.deepEqual(await users(alice), ['alice']), { what: 'alice online' });
  await eventually(async () => assert.equal(await card(alice, `alice joined ${ROOM}.`).count(), 1));

  const bob = await joinRooms('bob');
  for (const page of [alice, bob]) {
    await eventually(async () => assert.deepEqual(await users(page), ['alice', 'bob']),
      { what: 'both in the online list' });
    await eventually(async () => assert.equal(await card(page, `bob joined ${ROOM}.`).count(), 1),
      { what: 'the system line for bob' });
  }

  await sayRooms(alice, 'hello bob');
  await sayRooms(bob, 'hi alice');
  for (const page of [alice, bob]) {
    for (const text of ['hello bob', 'hi alice']) {
      await eventually(async () => assert.equal(await card(page, text).count(), 1), { what: text });
    }
  }
  // The app marks its own messages by client_id, and shows the author and a valid time.
  assert.match(await card(alice, 'hello bob').getAttribute('class'), /\bmine\b/);
  assert.doesNotMatch(await card(bob, 'hello bob').getAttribute('class'), /\bmine\b/);
  const meta = await card(bob, 'hello bob').locator('.meta').textContent();
  assert.match(meta, /^alice · /);
  assert.doesNotMatch(meta, /Invalid Date/);

  await bob.context().close();
  await eventually(async () => assert.equal(await card(alice, `bob left ${ROOM}.`).count(), 1),
    { what: 'the system line for bob leaving' });
  await eventually(async () => assert.deepEqual(await users(alice), ['alice']), { what: 'bob gone' });

  // A latecomer gets the history as message cards, then the system line and the online list.
  const carol = await joinRooms('carol');
  await eventually(async () => assert.deepEqual(await users(carol), ['alice', 'carol']));
  await eventually(async () => assert.equal(await card(carol, 'hi alice').count(), 1), { what: 'history' });
  const order = await cards(carol).locator('.content').allTextContents();
  assert.deepEqual(order, ['hello bob', 'hi alice', `carol joined ${ROOM}.`]);

  for (const page of [alice, carol]) await assertNoEmptyCard(page);
  await sleep(200);
  for (const page of [alice, carol]) await assertNoEmptyCard(page);
  await alice.context().close();
  await carol.context().close();
});

// ---- the FastAPI documentation example (seed 003), --compat fastapi -----------------

test('FastAPI documentation page chats through /ws/{client_id}', async () => {
  const one = await openSeed(compat, 'fastapi-docs.html', 'docs-1');
  await sleep(5);   // the page's client_id is Date.now(): two pages, two ids
  const two = await openSeed(compat, 'fastapi-docs.html', 'docs-2');
  const idOne = await one.locator('#ws-id').textContent();
  const idTwo = await two.locator('#ws-id').textContent();
  assert.notEqual(idOne, idTwo);
  const lines = (page) => page.locator('#messages li').allTextContents();
  // Both sockets are open before anyone speaks.
  for (const page of [one, two]) {
    await eventually(async () => assert.equal(await page.evaluate(() => ws.readyState), 1), { what: 'socket open' });
  }

  await one.locator('#messageText').fill('hello from one');
  await one.getByRole('button', { name: 'Send' }).click();
  await eventually(async () => assert.deepEqual(await lines(one),
    ['You wrote: hello from one', `Client #${idOne} says: hello from one`]), { what: 'the sender\'s lines' });
  await eventually(async () => assert.deepEqual(await lines(two), [`Client #${idOne} says: hello from one`]),
    { what: 'the other page\'s line' });

  await one.context().close();
  await eventually(async () => assert.deepEqual(await lines(two),
    [`Client #${idOne} says: hello from one`, `Client #${idOne} left the chat`]), { what: 'the leave line' });
  await two.context().close();
});

// ---- the first app's Vue client (seed 000), default mode -----------------------------

test('the first app\'s Vue client still works in the default mode', async () => {
  const a = await openSeed(plain, 'vue-chat.html', 'vue-a');
  const b = await openSeed(plain, 'vue-chat.html', 'vue-b');
  const shown = (page) => page.locator('#messages .message').allTextContents();
  for (const page of [a, b]) {
    await eventually(async () => assert.equal(await page.evaluate(() => document.readyState), 'complete'));
  }
  await sleep(300);   // both sockets open (the component shows no connection state)
  await a.locator('#newMessage').fill('hello from vue');
  await a.locator('#newMessage').press('Enter');
  for (const page of [a, b]) {
    await eventually(async () => assert.deepEqual(await shown(page), ['hello from vue']), { what: 'the message' });
  }
  assert.equal(await a.locator('#newMessage').inputValue(), '', 'the field is cleared');
  // A page opened later gets it from GET /messages.
  const c = await openSeed(plain, 'vue-chat.html', 'vue-c');
  await eventually(async () => assert.deepEqual(await shown(c), ['hello from vue']), { what: 'the history' });
  for (const page of [a, b, c]) await page.context().close();
});

test('no script errors on any seed page', () => {
  assert.deepEqual(pageErrors, []);
});
