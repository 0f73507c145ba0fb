// A room round trip with two ws clients (SPEC §4.2).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startWisp, open, closed } from './helpers.mjs';

let server;
before(async () => { server = await startWisp(); });
after(async () => { await server?.stop(); });

const RFC3339_MICROS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/;

test('two clients in a room: welcome, join, message to both, leave', async () => {
  const room = `node-${process.pid}-${Date.now()}`;
  const a = await open(server.url(`/ws/${room}/alice`));
  const aBox = a.box;
  const wa = await aBox.nextJson();
  assert.equal(wa.type, 'welcome');
  assert.equal(wa.room_id, room);
  assert.equal(wa.client_id, 'alice');
  assert.deepEqual(wa.users, ['alice']);

  const b = await open(server.url(`/ws/${room}/bob`));
  const bBox = b.box;
  const wb = await bBox.nextJson();
  assert.equal(wb.type, 'welcome');
  assert.deepEqual([...wb.users].sort(), ['alice', 'bob']);

  const join = await aBox.nextJson();
  assert.equal(join.type, 'join');
  assert.equal(join.client_id, 'bob');

  b.send(JSON.stringify({ content: '  hello from node  ' }));
  const ma = await aBox.nextJson();
  const mb = await bBox.nextJson();
  assert.deepEqual(ma, mb);
  assert.equal(ma.type, 'message');
  assert.equal(ma.client_id, 'bob');
  assert.equal(ma.content, 'hello from node');
  assert.equal(ma.room_id, room);
  assert.equal(typeof ma.id, 'number');
  assert.match(ma.timestamp, RFC3339_MICROS);

  const res = await fetch(`${server.http}/rooms/${encodeURIComponent(room)}/messages`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('access-control-allow-origin'), '*');
  const doc = await res.json();
  assert.deepEqual(doc.messages.map((m) => m.content), ['hello from node']);

  b.close(1000, 'leaving');
  await closed(b);
  const leave = await aBox.nextJson();
  assert.equal(leave.type, 'leave');
  assert.equal(leave.client_id, 'bob');

  a.close();
  await closed(a);
});
