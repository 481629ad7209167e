// Opens N keep-alive connections to HOST:PORT, sends one GET /health on each,
// reads the answer, then holds them idle for HOLD seconds and prints how many
// are open. Used by scripts/bench-http.sh to measure RSS per idle connection.
// usage: node scripts/idle-conns.mjs PORT N HOLD_SECONDS
import net from 'node:net';

const [port, n, hold] = process.argv.slice(2).map(Number);
const sockets = [];
let answered = 0;
let failed = 0;

function open(i) {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let got = '';
    s.setNoDelay(true);
    s.on('connect', () => s.write('GET /health HTTP/1.1\r\nHost: x\r\n\r\n'));
    s.on('data', (d) => {
      got += d;
      if (got.includes('\r\n\r\n') && got.includes('"status"')) {
        answered++;
        resolve();
      }
    });
    s.on('error', () => { failed++; resolve(); });
    sockets.push(s);
  });
}

const batch = 500;
for (let i = 0; i < n; i += batch) {
  const ps = [];
  for (let j = i; j < Math.min(n, i + batch); j++) ps.push(open(j));
  await Promise.all(ps);
}
console.log(`open ${answered} answered, ${failed} failed; holding ${hold}s`);
await new Promise((r) => setTimeout(r, hold * 1000));
for (const s of sockets) s.destroy();
