// Micro-benchmark used to pick node-peer's broadcast strategy.
//
// Starts server.mjs with each --broadcast mode in turn, connects CLIENTS
// clients to /ws, and has every client send MSGS messages of SIZE bytes
// (closed loop: at most WINDOW of its own messages in flight). Reports the
// server's CPU time (from /proc) per delivered frame and the wall time;
// server CPU is the figure that matters, as the client shares the machine.
//
// usage: node bench.mjs [CLIENTS=64] [MSGS=200] [SIZE=32] [WINDOW=4]
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { WebSocket } from 'ws';

const [CLIENTS, MSGS, SIZE, WINDOW] = [64, 200, 32, 4].map((d, i) => Number(process.argv[2 + i] ?? d));
const TICK = 100; // USER_HZ

function cpu(pid) {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(f[11]) + Number(f[12])) / TICK; // utime + stime, seconds
}

async function run(mode) {
  // SERVER_CMD="path/to/peer args" benchmarks another server instead.
  const srv = process.env.SERVER_CMD
    ? spawn(process.env.SERVER_CMD.split(' ')[0], process.env.SERVER_CMD.split(' ').slice(1))
    : spawn(process.execPath, [new URL('./server.mjs', import.meta.url).pathname, '--broadcast', mode]);
  const url = await new Promise((res) => {
    srv.stdout.on('data', (d) => {
      const m = /http:\/\/(\S+?)\//.exec(String(d));
      if (m) res(`ws://${m[1]}/ws`);
    });
  });
  const clients = await Promise.all(
    Array.from({ length: CLIENTS }, () => new Promise((res) => {
      const ws = new WebSocket(url);
      ws.on('open', () => res(ws));
    })),
  );
  const total = CLIENTS * MSGS * CLIENTS;
  let received = 0;
  const t0 = performance.now();
  const c0 = cpu(srv.pid);
  await new Promise((done) => {
    clients.forEach((ws, i) => {
      const tag = `c${String(i).padStart(4, '0')}`;
      const pad = 'x'.repeat(Math.max(0, SIZE - tag.length));
      let sent = 0;
      let inflight = 0;
      const pump = () => {
        while (inflight < WINDOW && sent < MSGS) {
          ws.send(tag + pad);
          sent++;
          inflight++;
        }
      };
      ws.on('message', (data) => {
        received++;
        if (data.toString('latin1', 0, tag.length) === tag) {
          inflight--;
          pump();
        }
        if (received === total) done();
      });
      pump();
    });
  });
  const wall = (performance.now() - t0) / 1000;
  const c1 = cpu(srv.pid);
  for (const ws of clients) ws.terminate();
  srv.kill();
  const ns = ((c1 - c0) * 1e9) / total;
  console.log(
    `${mode.padEnd(6)} deliveries=${total} wall=${wall.toFixed(2)}s server_cpu=${(c1 - c0).toFixed(2)}s ` +
      `=> ${ns.toFixed(0)} ns server CPU/delivery, ${(total / wall / 1e3).toFixed(0)}k deliveries/s`,
  );
}

for (let round = 0; round < 2; round++) for (const mode of (process.env.MODES ?? 'cork,frame,buffer,string').split(',')) await run(mode);
