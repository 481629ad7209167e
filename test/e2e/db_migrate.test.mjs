// The embedded migrations (chatloop --migrate) against a real PostgreSQL, and
// scripts/pg-local.sh, which starts that PostgreSQL for make run and the tests.
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { pgLocal, query, startPg } from './lib/pg.mjs';
import { freePort, runCli } from './lib/server.mjs';

let pg;
before(async () => {
  pg = await startPg();
});
after(async () => {
  if (pg) await pg.stop();
});

const migrate = (url, { timeout = 30000 } = {}) =>
  runCli(['--config', '/dev/null', '--migrate'], { env: { DATABASE_URL: url }, timeout });

async function migrated() {
  const db = await pg.freshDatabase();
  const r = await migrate(db.url);
  assert.equal(r.code, 0, `--migrate exit code; stderr: ${r.stderr}`);
  assert.equal(r.stderr, '', 'a successful migration prints nothing');
  return db;
}

// Every table and column after the migrations (0001 .. 0004): "name type" with "!" for NOT NULL
// (types as information_schema's udt_name).
const SCHEMA = {
  schema_migrations: ['version int4!', 'name text!', 'applied_at timestamptz!'],
  users: ['id uuid!', 'email text!', 'password_hash text!', 'created_at timestamptz!'],
  api_keys: ['id uuid!', 'user_id uuid!', 'name text', 'key_hash text!', 'prefix text!',
    'created_at timestamptz!', 'last_used_at timestamptz', 'revoked_at timestamptz'],
  agents: ['id uuid!', 'user_id uuid!', 'name text!', 'system_prompt text', 'model text',
    'temperature float8', 'max_tokens int4', 'top_p float8', 'reasoning_effort text', 'k int4!',
    'tools jsonb!', 'created_at timestamptz!', 'updated_at timestamptz!', 'collection text'],
  conversations: ['id uuid!', 'user_id uuid!', 'session_key text', 'title text', 'agent_id uuid',
    'system_prompt text', 'model text', 'created_at timestamptz!', 'updated_at timestamptz!'],
  messages: ['id uuid!', 'conversation_id uuid!', 'user_id uuid!', 'role text!', 'content text!',
    'status text!', 'tool_calls jsonb', 'model text', 'prompt_tokens int4', 'completion_tokens int4',
    'error text', 'created_at timestamptz!'],
  usage_events: ['id int8!', 'user_id uuid!', 'idempotency_key text!', 'conversation_id uuid',
    'message_id uuid', 'model text!', 'prompt_tokens int4!', 'completion_tokens int4!',
    'total_tokens int4!', 'estimated bool!', 'source text!', 'created_at timestamptz!',
    'api_key_id uuid'],
  tasks: ['id uuid!', 'user_id uuid!', 'title text!', 'description text', 'status text!',
    'due_at timestamptz', 'created_at timestamptz!', 'updated_at timestamptz!', 'completed_at timestamptz',
    'number int4!'],
  task_numbers: ['user_id uuid!', 'last int4!'],
  documents: ['id uuid!', 'user_id uuid!', 'title text!', 'collection text!', 'content text!',
    'created_at timestamptz!'],
  document_chunks: ['id int8!', 'document_id uuid!', 'user_id uuid!', 'collection text!', 'seq int4!',
    'content text!', 'tsv tsvector'],
  user_limits: ['user_id uuid!', 'shard int4!', 'tat timestamptz!'],
  turn_slots: ['user_id uuid!', 'slot int4!', 'lease text', 'lapses_at timestamptz!'],
  ip_limits: ['addr text!', 'tat timestamptz!'],
};

test('migrations apply to an empty database: every table, with its columns', async () => {
  const db = await migrated();
  const cols = await db.query(
    `SELECT table_name, column_name, udt_name, is_nullable
       FROM information_schema.columns WHERE table_schema = 'public'
      ORDER BY table_name, ordinal_position`);
  const got = {};
  for (const c of cols.rows) {
    (got[c.table_name] ||= []).push(`${c.column_name} ${c.udt_name}${c.is_nullable === 'NO' ? '!' : ''}`);
  }
  assert.deepEqual(Object.keys(got).sort(), Object.keys(SCHEMA).sort(), 'the tables');
  for (const [t, want] of Object.entries(SCHEMA)) assert.deepEqual(got[t], want, `columns of ${t}`);

  const m = await db.query('SELECT version, name FROM schema_migrations');
  assert.deepEqual(m.rows, [{ version: 1, name: '0001_initial' },
    { version: 2, name: '0002_keys_agents_limits' },
    { version: 3, name: '0003_limits_without_waits' },
    { version: 4, name: '0004_task_numbers' }]);

  // The indexes the queries rely on.
  const idx = (await db.query(`SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'`)).rows;
  const def = (name) => idx.find((i) => i.indexname === name)?.indexdef || '';
  assert.match(def('users_email_lower_key'), /UNIQUE INDEX .* \(lower\(email\)\)/);
  assert.match(def('document_chunks_tsv_idx'), /USING gin \(tsv\)/);
  assert.match(def('conversations_user_updated_idx'), /\(user_id, updated_at DESC, id DESC\)/);
  assert.match(def('messages_conversation_created_idx'), /\(conversation_id, created_at, id\)/);
  assert.match(def('usage_events_user_created_idx'), /\(user_id, created_at\)/);
  assert.ok(idx.some((i) => /UNIQUE .*\(idempotency_key\)/.test(i.indexdef)), 'usage_events.idempotency_key is unique');
  assert.ok(idx.some((i) => /UNIQUE .*\(user_id, session_key\)/.test(i.indexdef)), 'conversations (user_id, session_key) is unique');
});

test('a second run is a no-op', async () => {
  const db = await migrated();
  const before1 = await db.query('SELECT version, name, applied_at FROM schema_migrations');
  const r = await migrate(db.url);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  const after1 = await db.query('SELECT version, name, applied_at FROM schema_migrations');
  assert.equal(after1.rows.length, 4);
  assert.deepEqual(after1.rows, before1.rows, 'nothing applied again');
});

test('concurrent runs on one empty database all succeed, applying once (advisory lock)', async () => {
  const db = await pg.freshDatabase();
  const runs = await Promise.all([1, 2, 3, 4].map(() => migrate(db.url)));
  for (const r of runs) assert.equal(r.code, 0, `exit code; stderr: ${r.stderr}`);
  const m = await db.query('SELECT version FROM schema_migrations ORDER BY version');
  assert.deepEqual(m.rows.map((x) => x.version), [1, 2, 3, 4], 'each migration applied once');
});

test('a version recorded under another name is refused and nothing is applied', async () => {
  const db = await pg.freshDatabase();
  await db.query(`CREATE TABLE schema_migrations (version int PRIMARY KEY, name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())`);
  await db.query(`INSERT INTO schema_migrations VALUES (1, '0001_something_else')`);
  const r = await migrate(db.url);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /0001_something_else/);
  assert.match(r.stderr, /0001_initial/);
  const t = await db.query(`SELECT to_regclass('public.users') AS t`);
  assert.equal(t.rows[0].t, null, 'no table created');
});

test('a migration that fails names itself and PostgreSQL\'s reason, and rolls back', async () => {
  // A table in the way: CREATE TABLE users fails inside 0001.
  const db = await pg.freshDatabase();
  await db.query('CREATE TABLE users (x int)');
  const r = await migrate(db.url);
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /migration 0001_initial failed: relation "users" already exists \(SQLSTATE 42P07\)/);
  assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  const t = await db.query(`SELECT to_regclass('public.schema_migrations') AS t`);
  assert.equal(t.rows[0].t, null, 'rolled back: not even schema_migrations remains');
});

test('bad URLs fail with a message that never contains the password', async () => {
  const secret = 'Sup3rSecretPw';
  const closed = await freePort();
  const cases = [
    [`postgresql://postgres:${secret}@127.0.0.1:${closed}/chatloop`, /cannot connect/],
    [`postgresql://postgres:${secret}@127.0.0.1:${pg.port}/no_such_db`, /no_such_db/],
    [`postgresql://postgres:${secret}%zz@127.0.0.1:${pg.port}/chatloop`, /invalid database_url/],
    [`postgresql://postgres:${secret}@127.0.0.1:${pg.port}/chatloop?sslmode=bogus`, /sslmode/],
    [`postgresql://nobody@127.0.0.1:${pg.port}/chatloop?password=${secret}`, /nobody/],
    [`host=127.0.0.1 port=${pg.port} user=nobody password=${secret} dbname=chatloop`, /nobody/],
    [`host=127.0.0.1 password='${secret} x' bogus=1`, /bogus/],
  ];
  for (const [url, why] of cases) {
    const r = await migrate(url);
    assert.notEqual(r.code, 0, `exit code for ${url}`);
    assert.match(r.stderr, why, `reason for ${url}`);
    assert.ok(!r.stderr.includes(secret) && !r.stderr.includes('Sup3r'), `password leaked: ${r.stderr}`);
    assert.match(r.stderr, /\*\*\*/, `the URL is shown redacted: ${r.stderr}`);
  }
  const r = await migrate('');
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /database_url is not set/);
});

test('the schema keeps rows with their user and cascades deletes', async () => {
  const db = await migrated();
  const q = (sql, p) => db.query(sql, p);
  const uid = async (email) =>
    (await q('INSERT INTO users (email, password_hash) VALUES ($1, $2) RETURNING id', [email, 'h'])).rows[0].id;
  const a = await uid('Alice@Example.com');
  const b = await uid('bob@example.com');
  await assert.rejects(q(`INSERT INTO users (email, password_hash) VALUES ('alice@example.COM', 'h')`),
    { code: '23505' }, 'emails are unique case-insensitively');

  const agent = (await q('INSERT INTO agents (user_id, name) VALUES ($1, $2) RETURNING id, k, tools', [a, 'helper'])).rows[0];
  assert.equal(agent.k, 0);
  assert.deepEqual(agent.tools, []);
  const conv = (await q('INSERT INTO conversations (user_id, agent_id, session_key) VALUES ($1, $2, $3) RETURNING id',
    [a, agent.id, 's1'])).rows[0].id;
  await assert.rejects(q('INSERT INTO conversations (user_id, session_key) VALUES ($1, $2)', [a, 's1']),
    { code: '23505' }, 'one conversation per (user, session key)');
  await q('INSERT INTO conversations (user_id, session_key) VALUES ($1, $2)', [b, 's1']); // another user: fine
  await q('INSERT INTO conversations (user_id) VALUES ($1), ($1)', [a]); // no key: any number
  await assert.rejects(q('INSERT INTO conversations (user_id, agent_id) VALUES ($1, $2)', [b, agent.id]),
    { code: '23503' }, "a conversation cannot use another user's agent");

  const msg = (id, user, role, extra = {}) =>
    q(`INSERT INTO messages (id, conversation_id, user_id, role, status, created_at)
       VALUES ($1, $2, $3, $4, $5, now())`, [id, conv, user, role, extra.status || 'complete']);
  await msg('00000000-0000-4000-8000-000000000001', a, 'user');
  await msg('00000000-0000-4000-8000-000000000002', a, 'assistant', { status: 'cancelled' });
  await assert.rejects(msg('00000000-0000-4000-8000-000000000003', b, 'user'), { code: '23503' },
    "a message cannot go into another user's conversation");
  await assert.rejects(msg('00000000-0000-4000-8000-000000000004', a, 'robot'), { code: '23514' });
  await assert.rejects(msg('00000000-0000-4000-8000-000000000005', a, 'user', { status: 'lost' }), { code: '23514' });

  const usage = (key, c) =>
    q(`INSERT INTO usage_events (user_id, idempotency_key, conversation_id, model, prompt_tokens,
         completion_tokens, total_tokens, source) VALUES ($1, $2, $3, 'm', 1, 2, 3, 'chat')`, [a, key, c]);
  await usage('turn-1', conv);
  await assert.rejects(usage('turn-1', conv), { code: '23505' }, 'an idempotency key counts once');

  const doc = (await q(`INSERT INTO documents (user_id, title, content) VALUES ($1, 't', 'c') RETURNING id, collection`, [a])).rows[0];
  assert.equal(doc.collection, 'default');
  await q(`INSERT INTO document_chunks (document_id, user_id, collection, seq, content)
           VALUES ($1, $2, 'default', 0, 'PostgreSQL ranks running documents')`, [doc.id, a]);
  await assert.rejects(q(`INSERT INTO document_chunks (document_id, user_id, collection, seq, content)
           VALUES ($1, $2, 'default', 1, 'x')`, [doc.id, b]), { code: '23503' });
  const hit = await q(`SELECT ts_rank(tsv, websearch_to_tsquery('english', $2)) AS rank FROM document_chunks
                       WHERE user_id = $1 AND tsv @@ websearch_to_tsquery('english', $2)`, [a, 'document run']);
  assert.equal(hit.rows.length, 1, 'the generated tsvector is searchable (stemmed)');
  assert.ok(hit.rows[0].rank > 0);

  // Deleting an agent keeps its conversations (agent_id cleared, user_id kept).
  await q('DELETE FROM agents WHERE id = $1', [agent.id]);
  const c1 = (await q('SELECT user_id, agent_id FROM conversations WHERE id = $1', [conv])).rows[0];
  assert.deepEqual(c1, { user_id: a, agent_id: null });
  // Deleting a conversation deletes its messages and keeps its usage.
  await q('DELETE FROM conversations WHERE id = $1', [conv]);
  assert.equal((await q('SELECT count(*)::int AS n FROM messages')).rows[0].n, 0);
  const u = (await q('SELECT user_id, conversation_id FROM usage_events')).rows;
  assert.deepEqual(u, [{ user_id: a, conversation_id: null }]);
  // Deleting a user deletes everything of theirs and nothing of anyone else's.
  await q(`INSERT INTO tasks (user_id, number, title) VALUES ($1, 1, 'x'), ($2, 1, 'y')`, [a, b]);
  await q(`INSERT INTO api_keys (user_id, key_hash, prefix) VALUES ($1, repeat('a', 64), 'cl_a')`, [a]);
  await assert.rejects(q(`INSERT INTO api_keys (user_id, key_hash, prefix) VALUES ($1, 'plain-key', 'p')`, [a]),
    { code: '23514' }, 'api keys are stored as sha256 hex');
  await q('DELETE FROM users WHERE id = $1', [a]);
  for (const t of ['api_keys', 'agents', 'conversations', 'messages', 'usage_events', 'tasks', 'documents', 'document_chunks']) {
    const n = (await q(`SELECT count(*)::int AS n FROM ${t} WHERE user_id = $1`, [a])).rows[0].n;
    assert.equal(n, 0, `${t} rows of the deleted user`);
  }
  assert.equal((await q('SELECT count(*)::int AS n FROM conversations WHERE user_id = $1', [b])).rows[0].n, 1);
  assert.equal((await q('SELECT count(*)::int AS n FROM tasks WHERE user_id = $1', [b])).rows[0].n, 1);
});

// ---- scripts/pg-local.sh ------------------------------------------------------------

const pidOf = (dataDir) => Number(readFileSync(path.join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);

test('pg-local.sh: start and stop are idempotent; status and url tell the truth', async () => {
  const dir = mkdtempSync(path.join(realpathSync(tmpdir()), 'chatloop-pgl-'));
  const port = await freePort();
  try {
    const env = { PG_FAST: '1' };
    let r = await pgLocal(['start', dir, String(port)], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout + r.stderr, '', 'start prints nothing but errors');
    const pid = pidOf(path.join(dir, 'data'));

    r = await pgLocal(['start', dir, String(port)], { env });
    assert.equal(r.code, 0, `second start: ${r.stderr}`);
    assert.equal(r.stdout + r.stderr, '');
    assert.equal(pidOf(path.join(dir, 'data')), pid, 'the same server still runs');

    r = await pgLocal(['start', dir, String(port + 1)], { env });
    assert.notEqual(r.code, 0, 'start on another port while running is refused');
    assert.match(r.stderr, new RegExp(`already running on port ${port}`));

    r = await pgLocal(['url', dir]);
    assert.equal(r.stdout, `postgresql://postgres@127.0.0.1:${port}/chatloop\n`, 'url remembers the port');
    const url = r.stdout.trim();
    assert.equal((await query(url, 'SELECT current_database() AS d')).rows[0].d, 'chatloop');
    const s = await query(url, `SELECT current_setting('listen_addresses') AS l, current_setting('fsync') AS f`);
    assert.deepEqual(s.rows[0], { l: '127.0.0.1', f: 'off' });

    assert.equal((await pgLocal(['status', dir])).code, 0, 'status: running');
    r = await pgLocal(['stop', dir]);
    assert.equal(r.code, 0, r.stderr);
    assert.notEqual((await pgLocal(['status', dir])).code, 0, 'status: stopped');
    r = await pgLocal(['stop', dir]);
    assert.equal(r.code, 0, `second stop: ${r.stderr}`);

    // Without PG_FAST the cluster is durable (what make run uses).
    r = await pgLocal(['start', dir]);
    assert.equal(r.code, 0, r.stderr);
    const d = await query(url, `SELECT current_setting('fsync') AS f, current_setting('synchronous_commit') AS s`);
    assert.deepEqual(d.rows[0], { f: 'on', s: 'on' });

    // A crash: the postmaster killed outright. start recovers.
    process.kill(pidOf(path.join(dir, 'data')), 'SIGKILL');
    r = await pgLocal(['start', dir], { env });
    assert.equal(r.code, 0, `start after a crash: ${r.stderr}`);
    assert.equal((await query(url, 'SELECT 1 AS one')).rows[0].one, 1);

    // A stale postmaster.pid naming a live process that is not postgres
    // (pids are reused after a crash): start must not believe it.
    r = await pgLocal(['stop', dir]);
    assert.equal(r.code, 0, r.stderr);
    const pidFile = path.join(dir, 'data', 'postmaster.pid');
    writeFileSync(pidFile, `${process.pid}\n${path.join(dir, 'data')}\n0\n${port}\n${dir}\n127.0.0.1\n0 0\nready\n`);
    assert.notEqual((await pgLocal(['status', dir])).code, 0, 'a stale pid file is not "running"');
    r = await pgLocal(['start', dir], { env });
    assert.equal(r.code, 0, `start over a stale pid file: ${r.stderr}`);
    assert.equal((await query(url, 'SELECT 1 AS one')).rows[0].one, 1);
  } finally {
    await pgLocal(['stop', dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('pg-local.sh: a directory the postgres user cannot reach falls back to /tmp', { skip: process.getuid() !== 0 && 'needs root' }, async () => {
  // mkdtemp makes a 0700 root-owned directory: postgres cannot traverse it.
  const parent = mkdtempSync(path.join(realpathSync(tmpdir()), 'chatloop-private-'));
  const dir = path.join(parent, 'pg');
  const port = await freePort();
  let target;
  try {
    const r = await pgLocal(['start', dir, String(port)], { env: { PG_FAST: '1' } });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /note: the postgres user cannot reach .*; the cluster lives in \/tmp\/chatloop-pg-[0-9a-f]{12}/);
    assert.ok(lstatSync(dir).isSymbolicLink(), `${dir} points at the cluster`);
    target = readlinkSync(dir);
    assert.ok(existsSync(path.join(target, 'data', 'PG_VERSION')));
    assert.equal((await pgLocal(['status', dir])).code, 0);
    const url = (await pgLocal(['url', dir])).stdout.trim();
    assert.equal((await query(url, 'SELECT 1 AS one')).rows[0].one, 1);
    const again = await pgLocal(['start', dir, String(port)], { env: { PG_FAST: '1' } });
    assert.equal(again.code, 0, again.stderr);
    assert.equal(again.stderr, '', 'the note comes once, when the cluster is made');
  } finally {
    await pgLocal(['stop', dir]);
    if (target) rmSync(target, { recursive: true, force: true });
    rmSync(parent, { recursive: true, force: true });
  }
});
