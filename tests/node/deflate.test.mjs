// permessage-deflate (RFC 7692) with the ws npm package's perMessageDeflate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startWisp, open, closed } from './helpers.mjs';

let server;

before(async () => {
  server = await startWisp('--max-message-bytes', '1048576');
});
after(async () => {
  await server?.stop();
});

async function metrics() {
  const body = await (await fetch(`${server.http}/metrics`)).text();
  const values = {};
  for (const line of body.split('\n')) {
    const m = /^([a-z_]+) (\S+)$/.exec(line);
    if (m) values[m[1]] = Number(m[2]);
  }
  return values;
}

test('ws negotiates permessage-deflate and large messages round-trip compressed', async () => {
  const before = await metrics();
  const ws = await open(server.url('/echo'), { perMessageDeflate: true });
  assert.equal(ws.extensions, 'permessage-deflate');
  const text = JSON.stringify(Array.from({ length: 3000 }, (_, i) => ({ id: i, content: 'hello ws' })));
  const binary = Buffer.from('binary, but compressible. '.repeat(4000));
  ws.send(text);
  const got = await ws.box.next(10000);
  assert.equal(got.isBinary, false);
  assert.equal(got.data.toString(), text);
  ws.send(binary);
  const gotBinary = await ws.box.next(10000);
  assert.equal(gotBinary.isBinary, true);
  assert.ok(gotBinary.data.equals(binary));
  const after = await metrics();
  const inflated = after.wisp_inflate_bytes_out_total - before.wisp_inflate_bytes_out_total;
  const received = after.wisp_inflate_bytes_in_total - before.wisp_inflate_bytes_in_total;
  const sentIn = after.wisp_deflate_bytes_in_total - before.wisp_deflate_bytes_in_total;
  const sentOut = after.wisp_deflate_bytes_out_total - before.wisp_deflate_bytes_out_total;
  assert.equal(inflated, text.length + binary.length);
  assert.ok(received > 0 && received < inflated / 5, `received ${received} of ${inflated}`);
  assert.equal(sentIn, text.length + binary.length);
  assert.ok(sentOut > 0 && sentOut < sentIn / 5, `sent ${sentOut} for ${sentIn}`);
  ws.close(1000);
  await closed(ws);
});

test('a room with deflate and plain members: everyone gets every event', async () => {
  const room = `deflate-${Date.now()}`;
  const a = await open(server.url(`/ws/${room}/a`), { perMessageDeflate: true });
  const b = await open(server.url(`/ws/${room}/b`));
  assert.equal(a.extensions, 'permessage-deflate');
  assert.equal(b.extensions, '');
  assert.equal((await a.box.nextJson()).type, 'welcome');
  assert.equal((await b.box.nextJson()).type, 'welcome');
  assert.equal((await a.box.nextJson()).type, 'join');
  const content = 'compress me, please '.repeat(100).trim();
  b.send(JSON.stringify({ content }));
  for (const ws of [a, b]) {
    const ev = await ws.box.nextJson();
    assert.equal(ev.type, 'message');
    assert.equal(ev.content, content);
  }
  a.close(1000);
  b.close(1000);
  await Promise.all([closed(a), closed(b)]);
});
