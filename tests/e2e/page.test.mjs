// The browser client's layout and lifecycle (SPEC §5), each at a desktop (1280×800) and a phone
// (390×844) viewport: the online list keeps to two rows with its own scroll and a count, the log
// is never drawn over it, every message shows its remaining lifetime from the start, the empty
// log names the TTL, joining folds the form and switching rooms is explicit, a reload rejoins by
// itself, after a daemon restart what was shown stays until its own expiry marked as no longer
// held by the server, and the page loads its script, style and icon under its CSP.
//
//   WISP_SCREENSHOT=1 also writes docs/screenshot-crowd.png and docs/screenshot-crowd-phone.png
//   (30 people online, messages at different ages).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { eventually, startDaemon, stopDaemon, launchChromium } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const DOCS = path.resolve(here, '../../docs');
const TTL_S = 20;
const VIEWPORTS = [
  { name: 'desktop', width: 1280, height: 800, shot: 'screenshot-crowd.png', room: 'town-square' },
  { name: 'phone', width: 390, height: 844, shot: 'screenshot-crowd-phone.png', room: 'market' },
];

let daemon = null;
let browser = null;
const problems = [];   // page errors and CSP violations, from every page

before(async () => {
  daemon = await startDaemon(['--history-ttl', String(TTL_S)]);
  browser = await launchChromium();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  await stopDaemon(daemon);
});

async function newPage(vp, key) {
  const context = await browser.newContext({ viewport: { width: vp.width, height: vp.height } });
  const page = await context.newPage();
  page.on('pageerror', (err) => problems.push(`${key}: ${err.message}`));
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) problems.push(`${key}: ${m.text()}`);
  });
  return page;
}

const status = (page) => page.locator('#status').textContent();
const msg = (page, text) => page.getByRole('log', { name: 'Messages' }).locator('.msg', { hasText: text });

async function joinAs(page, name, room) {
  await page.getByLabel('Name', { exact: true }).fill(name);
  await page.getByLabel('Room', { exact: true }).fill(room);
  await page.getByRole('button', { name: 'Join' }).click();
  await eventually(async () => assert.match(await status(page), /online/), { what: `${name} online` });
}

async function say(page, text) {
  const field = page.getByRole('textbox', { name: 'Message', exact: true });
  await field.fill(text);
  await field.press('Enter');
  await eventually(async () => assert.equal(await msg(page, text).count(), 1), { what: text });
}

/** The share of its life a message's bar shows now (its scaleX). */
const lifeLeft = (page, text) => msg(page, text).locator('.life > span').evaluate((e) => {
  const t = getComputedStyle(e).transform;
  return t === 'none' ? 1 : new DOMMatrixReadOnly(t).a;
});

/** `n` other people in `room`, connected from a page of their own. */
async function crowd(vp, room, n) {
  const page = await newPage(vp, 'crowd');
  await page.goto(daemon.url('/healthz'));
  await page.evaluate(async ({ room, n }) => {
    window.crowd = await Promise.all(Array.from({ length: n }, (_, i) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${location.host}/ws/${room}/guest-${String(i + 1).padStart(2, '0')}`);
      ws.onopen = () => resolve(ws);
      ws.onerror = reject;
    })));
  }, { room, n });
  return page;
}

for (const vp of VIEWPORTS) {
  const ROOM = vp.room;   // each run has a daemon of its own

  test(`[${vp.name}] the empty log names the TTL; joining folds the form; switching rooms is explicit`, async () => {
    const page = await newPage(vp, `${vp.name}-switch`);
    await page.goto(daemon.url('/'));
    const log = page.getByRole('log', { name: 'Messages' });
    await eventually(async () => assert.equal(await log.getAttribute('data-empty'),
      `Messages disappear ${TTL_S} s after they are sent.`), { what: 'the TTL in the empty text' });

    await joinAs(page, 'sam', `${ROOM}-a`);
    assert.equal(await page.locator('#join-form').isVisible(), false, 'the form is folded once joined');
    const bar = page.locator('#roombar');
    assert.equal(await bar.isVisible(), true);
    assert.match(await bar.textContent(), new RegExp(`In ${ROOM}-a as sam`));

    await page.getByRole('button', { name: 'Switch room' }).click();
    assert.equal(await page.locator('#join-form').isVisible(), true);
    await page.getByRole('button', { name: 'Cancel' }).click();
    assert.equal(await page.locator('#join-form').isVisible(), false, 'Cancel folds it again');

    await page.getByRole('button', { name: 'Switch room' }).click();
    await page.getByLabel('Room', { exact: true }).fill(`${ROOM}-b`);
    await page.getByRole('button', { name: 'Join' }).click();
    await eventually(async () => assert.match(await bar.textContent(), new RegExp(`In ${ROOM}-b as sam`)));
    await eventually(async () => assert.match(await status(page), /online/));
    assert.equal(await page.locator('#join-form').isVisible(), false);

    await page.getByRole('button', { name: 'Leave' }).click();
    assert.equal(await page.locator('#join-form').isVisible(), true, 'leaving shows the form');
    assert.equal(await bar.isVisible(), false);
    await page.context().close();
  });

  test(`[${vp.name}] 30 online: the list keeps to its bounds with a count; each message shows its life left`, async () => {
    const others = await crowd(vp, ROOM, 29);
    const page = await newPage(vp, `${vp.name}-crowd`);
    await page.goto(daemon.url('/'));
    await joinAs(page, 'ada', ROOM);
    const list = page.getByRole('list', { name: 'Online' });
    await eventually(async () => assert.equal(await list.getByRole('listitem').count(), 30), { what: '30 online' });
    assert.equal(await page.locator('#online-count').textContent(), '30');
    // The list scrolls within two rows of names, and the log starts below it.
    const box = await list.evaluate((e) => {
      const r = e.getBoundingClientRect();
      const log = document.getElementById('messages').getBoundingClientRect();
      return { bottom: r.bottom, height: r.height, scroll: e.scrollHeight, client: e.clientHeight, logTop: log.top };
    });
    assert.ok(box.scroll > box.client, `the names overflow into the list's own scroll (${JSON.stringify(box)})`);
    assert.ok(box.height <= 60, `two rows at most (${box.height}px)`);
    assert.ok(box.bottom <= box.logTop, `the log is below the list (${JSON.stringify(box)})`);

    // Messages at different ages: each bar shows its share of life left from the start.
    await say(page, 'the oldest line here');
    await others.evaluate(() => window.crowd[3].send('a word from guest-04'));
    await eventually(async () => assert.equal(await msg(page, 'guest-04').count(), 1));
    await sleep(3000);
    await others.evaluate(() => window.crowd[11].send('guest-12 chimes in a little later'));
    await sleep(2500);
    await say(page, 'and the newest one');
    const oldest = await lifeLeft(page, 'the oldest line here');
    const newest = await lifeLeft(page, 'and the newest one');
    assert.ok(newest > 0.9, `a new message starts (nearly) full: ${newest}`);
    assert.ok(oldest < newest - 0.15, `an older one has less left: ${oldest} vs ${newest}`);
    assert.ok(oldest > 0.5, `and still some: ${oldest}`);
    assert.match(await msg(page, 'the oldest line here').getAttribute('title'), /^disappears at /);
    if (process.env.WISP_SCREENSHOT === '1') {
      await page.screenshot({ path: path.join(DOCS, vp.shot) });
    }
    await page.context().close();
    await others.context().close();
  });

  test(`[${vp.name}] a reload rejoins by itself; after a daemon restart what was shown stays, marked`, async () => {
    const page = await newPage(vp, `${vp.name}-reload`);
    await page.goto(daemon.url('/'));
    await joinAs(page, 'rey', `${ROOM}-r`);
    await say(page, 'said before the reload');
    await page.reload();
    await eventually(async () => assert.match(await status(page), /online as rey/), { what: 'rejoined after reload' });
    assert.match(page.url(), new RegExp(`room=${ROOM}-r`));
    await eventually(async () => assert.equal(await msg(page, 'said before the reload').count(), 1),
      { what: 'the history after the reload' });

    const port = daemon.port;
    await stopDaemon(daemon);
    daemon = await startDaemon(['--history-ttl', String(TTL_S)], { bind: `127.0.0.1:${port}` });
    await eventually(async () => assert.match(await status(page), /online/), { timeout: 15000, what: 'back online' });
    const kept = msg(page, 'said before the reload');
    assert.equal(await kept.count(), 1, 'still shown after the restart');
    assert.match(await kept.getAttribute('class'), /\bstale\b/);
    assert.match(await kept.textContent(), /no longer held by the server/);
    await say(page, 'said after the restart');
    assert.doesNotMatch(await msg(page, 'said after the restart').getAttribute('class'), /\bstale\b/);
    await page.context().close();
  });
}

test('the page\'s parts and icon are served under its CSP, with no violation on any page', async () => {
  for (const [p, type] of [['/client.js', 'text/javascript'], ['/client.css', 'text/css'], ['/favicon.ico', 'image/svg+xml']]) {
    const res = await fetch(daemon.url(p));
    assert.equal(res.status, 200, p);
    assert.ok((res.headers.get('content-type') ?? '').startsWith(type), p);
  }
  const csp = (await fetch(daemon.url('/'))).headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /connect-src 'self'/);
  assert.deepEqual(problems, []);
});

test('someone typing is shown to the others for a few seconds, and not to the typist', async () => {
  const vp = VIEWPORTS[1];
  const room = `typing-${process.pid}`;
  const alice = await newPage(vp, 'typing-alice');
  const bob = await newPage(vp, 'typing-bob');
  for (const [page, name] of [[alice, 'alice'], [bob, 'bob']]) {
    await page.goto(daemon.url('/'));
    await joinAs(page, name, room);
  }
  await bob.getByRole('textbox', { name: 'Message', exact: true }).pressSequentially('hel');
  await eventually(async () => assert.equal(await alice.locator('#typing').textContent(), 'bob is typing…'),
    { what: 'the typing line' });
  assert.equal(await bob.locator('#typing').textContent(), '', 'not shown to the typist');
  // It goes when the message comes.
  await bob.getByRole('textbox', { name: 'Message', exact: true }).press('Enter');
  await eventually(async () => assert.equal(await alice.locator('#typing').textContent(), ''),
    { what: 'the typing line to go' });
  for (const page of [alice, bob]) await page.context().close();
});

test('two tabs of one person are one entry in Online, and closing one announces nothing', async () => {
  const vp = VIEWPORTS[0];
  const room = `tabs-${process.pid}`;
  const bob = await newPage(vp, 'tabs-bob');
  await bob.goto(daemon.url('/'));
  await joinAs(bob, 'bob', room);
  // Two pages of one browser context share localStorage, so the token: two tabs.
  const tab1 = await newPage(vp, 'tabs-alice-1');
  await tab1.goto(daemon.url('/'));
  await joinAs(tab1, 'alice', room);
  const tab2 = await tab1.context().newPage();
  tab2.on('pageerror', (err) => problems.push(`tabs-alice-2: ${err.message}`));
  await tab2.goto(daemon.url(`/?room=${room}`));   // the saved name: it joins by itself
  await eventually(async () => assert.match(await status(tab2), /online as alice$/), { what: 'the second tab online' });
  const names = async (page) => (await page.getByRole('list', { name: 'Online' }).getByRole('listitem')
    .allTextContents()).map((s) => s.replace(/\s*\(you\)\s*$/, '')).sort();
  for (const page of [bob, tab1, tab2]) {
    await eventually(async () => assert.deepEqual(await names(page), ['alice', 'bob']), { what: 'one alice' });
  }
  await tab1.close();
  await sleep(500);
  const log = bob.getByRole('log', { name: 'Messages' });
  assert.equal(await log.getByText('alice left').count(), 0, 'no leave while a tab is open');
  assert.deepEqual(await names(bob), ['alice', 'bob']);
  await say(tab2, 'from the other tab');
  await eventually(async () => assert.equal(await msg(bob, 'from the other tab').count(), 1));
  await tab2.context().close();
  await eventually(async () => assert.equal(await log.getByText('alice left').count(), 1), { what: 'the leave' });
  await bob.context().close();
});
