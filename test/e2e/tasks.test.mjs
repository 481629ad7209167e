// Tasks REST (issue 12 item 1) against a real PostgreSQL: create, list with
// the status filter (newest first, paginated), get / patch / delete by UUID
// or by the per-user number, every field validated with a 400 naming it,
// another user's task 404 everywhere and untouched, numbers never reused
// after a delete, completed_at following the status.
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { checkErrorEnvelope, makeTest } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { checkOkEnvelope, stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, assertKeys, newUser, startChatServer } from './lib/chat.mjs';

let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: 3, mockTokenInterval: 0, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { retries: 0 });
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const KEYS = ['id', 'number', 'title', 'description', 'status', 'created_at', 'updated_at', 'completed_at'];
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/;
const NOBODY = '00000000-0000-4000-8000-000000000000';

const call = (u, method, path, body) => api(srv.port, method, path, { token: u.token, body });
const ok = async (u, method, path, body, status = 200) => checkOkEnvelope(assert, await call(u, method, path, body), status);
const create = (u, body) => ok(u, 'POST', '/api/v1/tasks', body, 201);
const list = (u, query = '') => ok(u, 'GET', `/api/v1/tasks${query}`);

test('create, get by id and by number, list newest first; a task starts pending with its number', async () => {
  const u = await newUser(srv.port);
  const a = await create(u, { title: 'Buy milk' });
  assertKeys(assert, a, KEYS, 'task');
  assert.equal(a.number, 1);
  assert.equal(a.title, 'Buy milk');
  assert.equal(a.description, null);
  assert.equal(a.status, 'pending');
  assert.equal(a.completed_at, null);
  assert.match(a.created_at, ISO);
  const b = await create(u, { title: 'Call the bank', description: 'about the card\nbefore Friday' });
  assert.equal(b.number, 2);
  assert.equal(b.description, 'about the card\nbefore Friday');

  assert.deepEqual(await ok(u, 'GET', `/api/v1/tasks/${a.id}`), a);
  assert.deepEqual(await ok(u, 'GET', '/api/v1/tasks/2'), b);
  const all = await list(u);
  assert.deepEqual(all.tasks.map((t) => t.number), [2, 1]);
  assert.equal(all.next_offset, null);

  // another user numbers from 1 too, and sees none of these
  const v = await newUser(srv.port);
  assert.equal((await create(v, { title: 'Other' })).number, 1);
  assert.deepEqual((await list(v)).tasks.map((t) => t.title), ['Other']);
});

test('status filter, pagination; PATCH sets completed_at with the status and clears it again', async () => {
  const u = await newUser(srv.port);
  for (let i = 1; i <= 5; i++) await create(u, { title: `task ${i}` });
  const done = await ok(u, 'PATCH', '/api/v1/tasks/2', { status: 'completed' });
  assert.equal(done.status, 'completed');
  assert.match(done.completed_at, ISO);
  await ok(u, 'PATCH', '/api/v1/tasks/4', { status: 'completed' });
  // staying completed keeps when it was completed
  const again = await ok(u, 'PATCH', '/api/v1/tasks/2', { title: 'task two', status: 'completed' });
  assert.equal(again.completed_at, done.completed_at);
  assert.equal(again.title, 'task two');

  assert.deepEqual((await list(u, '?status=pending')).tasks.map((t) => t.number), [5, 3, 1]);
  assert.deepEqual((await list(u, '?status=completed')).tasks.map((t) => t.number), [4, 2]);
  assert.deepEqual((await list(u, '?status=all')).tasks.map((t) => t.number), [5, 4, 3, 2, 1]);
  const p1 = await list(u, '?limit=2');
  assert.deepEqual(p1.tasks.map((t) => t.number), [5, 4]);
  assert.equal(p1.next_offset, 2);
  const p2 = await list(u, `?limit=2&offset=${p1.next_offset}`);
  assert.deepEqual(p2.tasks.map((t) => t.number), [3, 2]);
  const p3 = await list(u, `?limit=2&offset=${p2.next_offset}`);
  assert.deepEqual(p3.tasks.map((t) => t.number), [1]);
  assert.equal(p3.next_offset, null);

  const back = await ok(u, 'PATCH', '/api/v1/tasks/2', { status: 'pending', description: 'reopened' });
  assert.equal(back.status, 'pending');
  assert.equal(back.completed_at, null);
  assert.equal(back.description, 'reopened');
  const cleared = await ok(u, 'PATCH', `/api/v1/tasks/${back.id}`, { description: null });
  assert.equal(cleared.description, null);
  assert.equal(cleared.title, 'task two');
});

test('DELETE by number or id; numbers are not reused; a deleted task is 404', async () => {
  const u = await newUser(srv.port);
  const t1 = await create(u, { title: 'one' });
  await create(u, { title: 'two' });
  const gone = await ok(u, 'DELETE', '/api/v1/tasks/2');
  assert.equal(gone.number, 2);
  assert.equal(gone.deleted, true);
  assert.match(gone.id, /^[0-9a-f-]{36}$/);
  checkErrorEnvelope(assert, await call(u, 'GET', '/api/v1/tasks/2'), 404, 'NOT_FOUND');
  checkErrorEnvelope(assert, await call(u, 'DELETE', '/api/v1/tasks/2'), 404, 'NOT_FOUND');
  assert.equal((await create(u, { title: 'three' })).number, 3, 'a deleted number is not given again');
  assert.deepEqual(await ok(u, 'DELETE', `/api/v1/tasks/${t1.id}`), { id: t1.id, number: 1, deleted: true });
  assert.deepEqual((await list(u)).tasks.map((t) => t.title), ['three']);
});

test('another user\'s task is 404 on every route and stays as it was', async () => {
  const owner = await newUser(srv.port);
  const t = await create(owner, { title: 'mine' });
  const other = await newUser(srv.port);
  for (const ref of [t.id, '1']) {
    checkErrorEnvelope(assert, await call(other, 'GET', `/api/v1/tasks/${ref}`), 404, 'NOT_FOUND');
    checkErrorEnvelope(assert, await call(other, 'PATCH', `/api/v1/tasks/${ref}`, { status: 'completed' }), 404, 'NOT_FOUND');
    checkErrorEnvelope(assert, await call(other, 'DELETE', `/api/v1/tasks/${ref}`), 404, 'NOT_FOUND');
  }
  assert.deepEqual(await ok(owner, 'GET', `/api/v1/tasks/${t.id}`), t);
  // ids that name nothing: not a UUID nor a number, a leading zero, too long, nobody's UUID
  for (const ref of ['abc', '01', '0', '1234567890', NOBODY, '-1'])
    checkErrorEnvelope(assert, await call(owner, 'GET', `/api/v1/tasks/${ref}`), 404, 'NOT_FOUND');
  // without a token
  const anon = await api(srv.port, 'GET', '/api/v1/tasks');
  checkErrorEnvelope(assert, anon, 401, 'UNAUTHORIZED');
});

test('every field is validated with a 400 naming it; nothing is stored', async () => {
  const u = await newUser(srv.port);
  const bad = async (method, path, body, field) => {
    const res = await call(u, method, path, body);
    checkErrorEnvelope(assert, res, 400, 'INVALID_REQUEST');
    assert.equal(res.json().error.details.field, field, `${JSON.stringify(body)}: ${res.text}`);
    return res.json().message;
  };
  assert.match(await bad('POST', '/api/v1/tasks', {}, 'title'), /'title' is required/);
  await bad('POST', '/api/v1/tasks', { title: '' }, 'title');
  await bad('POST', '/api/v1/tasks', { title: '   ' }, 'title');
  await bad('POST', '/api/v1/tasks', { title: 7 }, 'title');
  await bad('POST', '/api/v1/tasks', { title: null }, 'title');
  await bad('POST', '/api/v1/tasks', { title: 'a\u0007b' }, 'title');
  assert.match(await bad('POST', '/api/v1/tasks', { title: 'x'.repeat(501) }, 'title'), /1 to 500 characters/);
  await bad('POST', '/api/v1/tasks', { title: 'ok', description: 5 }, 'description');
  await bad('POST', '/api/v1/tasks', { title: 'ok', description: 'd'.repeat(10001) }, 'description');
  await bad('POST', '/api/v1/tasks', { title: 'ok', status: 'completed' }, 'status');
  assert.match(await bad('POST', '/api/v1/tasks', { title: 'ok', due: 'tomorrow' }, 'due'), /not a field of a task/);
  // 500 characters (not bytes) is fine
  assert.equal((await create(u, { title: 'é'.repeat(500) })).title.length, 500);
  const res = await call(u, 'POST', '/api/v1/tasks', '{"title":');
  checkErrorEnvelope(assert, res, 400, 'INVALID_REQUEST');

  await bad('PATCH', '/api/v1/tasks/1', {}, 'body');
  await bad('PATCH', '/api/v1/tasks/1', { status: 'done' }, 'status');
  await bad('PATCH', '/api/v1/tasks/1', { title: null }, 'title');
  await bad('PATCH', '/api/v1/tasks/1', { priority: 1 }, 'priority');
  for (const q of ['?status=open', '?status=', '?limit=0', '?limit=101', '?offset=-1']) {
    const r = await call(u, 'GET', `/api/v1/tasks${q}`);
    checkErrorEnvelope(assert, r, 400, 'INVALID_REQUEST');
  }
  assert.deepEqual((await list(u)).tasks.map((t) => t.number), [1], 'only the valid task was stored');
});

test('concurrent creates of one user get distinct numbers, in one sequence', async () => {
  const u = await newUser(srv.port);
  const made = await Promise.all(Array.from({ length: 20 }, (_, i) => create(u, { title: `t${i}` })));
  assert.deepEqual(made.map((t) => t.number).sort((x, y) => x - y), Array.from({ length: 20 }, (_, i) => i + 1));
});

test('the per-user budget: the 10,000th task is made, the next is a 400 and nothing is stored', async () => {
  const u = await newUser(srv.port);
  await pg.query(`INSERT INTO tasks (user_id, number, title) SELECT $1, g, 'bulk ' || g FROM generate_series(1, 9999) g`, [u.userId]);
  await pg.query(`INSERT INTO task_numbers (user_id, last) VALUES ($1, 9999)`, [u.userId]);
  assert.equal((await create(u, { title: 'the last one' })).number, 10000);
  const res = await call(u, 'POST', '/api/v1/tasks', { title: 'one too many' });
  checkErrorEnvelope(assert, res, 400, 'INVALID_REQUEST');
  assert.match(res.json().message, /at most 10000 tasks per user/);
  const n = (await pg.query('SELECT count(*)::int AS n, max(number) AS m FROM tasks WHERE user_id = $1', [u.userId])).rows[0];
  assert.deepEqual(n, { n: 10000, m: 10000 });
  // another user is not affected
  assert.equal((await create(await newUser(srv.port), { title: 'fine' })).number, 1);
});
