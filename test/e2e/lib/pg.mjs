// A throwaway PostgreSQL cluster for a test file, through scripts/pg-local.sh:
// a fresh temporary directory and a free port, PG_FAST=1 (no fsync), stopped
// and deleted in after() — and, should the test process die first, by a
// synchronous stop on exit.
//
//   const pg = await startPg();          // in before()
//   pg.url                                // postgresql://postgres@127.0.0.1:PORT/chatloop
//   await pg.query('SELECT 1')            // on the chatloop database
//   const db = await pg.freshDatabase();  // an empty database of its own: {url, name, query}
//   await pg.halt(); await pg.restart();  // the server down and back: same dir, port, data
//   await pg.stop();                      // in after()
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { freePort } from './server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
export const PG_LOCAL = path.resolve(here, '../../../scripts/pg-local.sh');

/** Runs scripts/pg-local.sh with `args`; resolves {code, stdout, stderr} (never rejects on exit codes). */
export function pgLocal(args, { env = {}, timeout = 120000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile('bash', [PG_LOCAL, ...args], { env: { ...process.env, ...env }, timeout }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') {
        reject(new Error(`pg-local.sh ${args.join(' ')}: ${err.message}\n${stderr}`));
        return;
      }
      resolve({ code: err ? err.code : 0, stdout, stderr });
    });
  });
}

// Clusters not yet stopped: stopped synchronously if the process exits first.
const live = new Map(); // dir -> cleanup()
process.on('exit', () => {
  for (const dir of live.keys()) {
    try {
      execFileSync('bash', [PG_LOCAL, 'stop', dir], { stdio: 'ignore', timeout: 30000 });
    } catch {}
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A client per call: simple and enough for tests. Returns pg's result. */
export async function query(url, sql, params = []) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return await c.query(sql, params);
  } finally {
    await c.end();
  }
}

let fresh = 0;

/** Starts a cluster in a new temporary directory on a free port. */
export async function startPg() {
  const dir = mkdtempSync(path.join(realpathSync(tmpdir()), 'chatloop-pg-'));
  const port = await freePort();
  live.set(dir, true);
  const r = await pgLocal(['start', dir, String(port)], { env: { PG_FAST: '1' } });
  if (r.code !== 0) {
    live.delete(dir);
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`pg-local.sh start failed (exit ${r.code}):\n${r.stderr}`);
  }
  const url = (await pgLocal(['url', dir, String(port)])).stdout.trim();
  const base = url.slice(0, url.lastIndexOf('/') + 1);
  return {
    dir,
    port,
    url,
    urlFor: (name) => base + name,
    query: (sql, params) => query(url, sql, params),
    /** Creates an empty database (for a test that needs one of its own). */
    async freshDatabase() {
      const name = `t${process.pid}_${++fresh}`;
      await query(url, `CREATE DATABASE ${name}`);
      const u = base + name;
      return { name, url: u, query: (sql, params) => query(u, sql, params) };
    },
    /**
     * Stops the server (fast shutdown: sessions are terminated) but keeps
     * the cluster, so restart() brings the same data back on the same port.
     */
    async halt() {
      const s = await pgLocal(['stop', dir]);
      if (s.code !== 0) throw new Error(`pg-local.sh stop failed (exit ${s.code}):\n${s.stderr}`);
    },
    /** Starts the halted cluster again: same directory, same port, same data. */
    async restart() {
      const r = await pgLocal(['start', dir, String(port)], { env: { PG_FAST: '1' } });
      if (r.code !== 0) throw new Error(`pg-local.sh start (restart) failed (exit ${r.code}):\n${r.stderr}`);
    },
    async stop() {
      const s = await pgLocal(['stop', dir]);
      live.delete(dir);
      rmSync(dir, { recursive: true, force: true });
      if (s.code !== 0) throw new Error(`pg-local.sh stop failed (exit ${s.code}):\n${s.stderr}`);
    },
  };
}
