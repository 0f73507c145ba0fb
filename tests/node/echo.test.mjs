// /echo with the ws npm package (SPEC §3, §4.3).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { startWisp, open, closed, within } from './helpers.mjs';

const SIZES = [0, 1, 125, 126, 65535, 65536, 1 << 20];
let server; // --max-message-bytes 2 MiB, for the 1 MiB cases
let small; // the default 64 KiB limit

before(async () => {
  server = await startWisp('--max-message-bytes', '2097152');
  small = await startWisp();
});
after(async () => {
  await server?.stop();
  await small?.stop();
});

function textOf(n) {
  return 'abcdefghijklmnopqrstuvwxyz0123456789'.repeat(Math.ceil(n / 36) + 1).slice(0, n);
}

for (const size of SIZES) {
  test(`text round trip, ${size} bytes`, async () => {
    const ws = await open(server.url('/echo'));
    const box = ws.box;
    const msg = textOf(size);
    ws.send(msg);
    const got = await box.next(10000);
    assert.equal(got.isBinary, false);
    assert.equal(got.data.length, size);
    assert.equal(got.data.toString(), msg);
    ws.close(1000);
    await closed(ws);
  });

  test(`binary round trip, ${size} bytes`, async () => {
    const ws = await open(server.url('/echo'));
    const box = ws.box;
    const msg = randomBytes(size);
    ws.send(msg);
    const got = await box.next(10000);
    assert.equal(got.isBinary, true);
    assert.ok(Buffer.compare(got.data, msg) === 0, 'payload differs');
    ws.close(1000);
    await closed(ws);
  });
}

test('utf-8 text with multi-byte characters', async () => {
  const ws = await open(server.url('/echo'));
  const box = ws.box;
  const msg = 'héllo — 你好 🌍🚀 ✓'.repeat(3000);
  ws.send(msg);
  assert.equal((await box.next()).data.toString(), msg);
  ws.close();
  await closed(ws);
});

test('fragmented message is reassembled', async () => {
  const ws = await open(server.url('/echo'));
  const box = ws.box;
  ws.send('frag-one ', { fin: false });
  ws.send('frag-two ', { fin: false });
  ws.send('frag-three', { fin: true });
  const got = await box.next();
  assert.equal(got.isBinary, false);
  assert.equal(got.data.toString(), 'frag-one frag-two frag-three');
  // binary, with a multi-byte split between fragments of a text message too
  const euro = Buffer.from('€');
  ws.send(Buffer.concat([Buffer.from('price '), euro.subarray(0, 1)]), { fin: false, binary: false });
  ws.send(Buffer.concat([euro.subarray(1), Buffer.from(' 5')]), { fin: true, binary: false });
  assert.equal((await box.next()).data.toString(), 'price € 5');
  ws.close();
  await closed(ws);
});

test('ping gets a pong with the same payload', async () => {
  const ws = await open(server.url('/echo'));
  const payload = randomBytes(32);
  const pong = within(once(ws, 'pong'), 5000, 'pong');
  ws.ping(payload);
  const [data] = await pong;
  assert.ok(Buffer.compare(data, payload) === 0, 'pong payload differs from ping');
  ws.close();
  await closed(ws);
});

test('server closes 1009 on an oversize message', async () => {
  const ws = await open(small.url('/echo'));
  const done = closed(ws);
  ws.send('x'.repeat(65537));
  const [code] = await done;
  assert.equal(code, 1009);
});

test('client close 1000 with a reason is answered with 1000', async () => {
  const ws = await open(server.url('/echo'));
  const done = closed(ws);
  ws.close(1000, 'bye from node');
  const [code] = await done;
  assert.equal(code, 1000);
  assert.equal(ws.readyState, ws.CLOSED);
});
