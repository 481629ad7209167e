// The OpenAPI document (src/http/assets/openapi.json, served at
// GET /openapi.json) against the router it describes: it validates as
// OpenAPI 3.1, every route `chatloop --routes` prints (the table a worker
// builds, every optional route switched on) is in it with its method and
// its security, and nothing in it names a route the server does not have.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import { Validator } from '@seriousme/openapi-schema-validator';
import { get, makeTest, runCli, startServer } from './lib/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const DOC_PATH = path.resolve(here, '../../src/http/assets/openapi.json');
const doc = JSON.parse(readFileSync(DOC_PATH, 'utf8'));

const METHODS = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'];

// Parameter names do not matter for routing: /a/{id} and /a/{x} are one route.
const norm = (p) => p.replace(/\{[^}]+\}/g, '{}');

let servers = [];
const test = makeTest(() => servers);
let routes; // [{method, path, auth}]

before(async () => {
  const r = await runCli(['--routes', '--debug-routes', 'on', '--auth', 'required']);
  assert.equal(r.code, 0, r.stderr);
  routes = r.stdout
    .trim()
    .split('\n')
    .map((line) => {
      const [method, p, auth] = line.split(' ');
      return { method, path: p, auth };
    });
  assert.ok(routes.length > 10, `--routes printed only:\n${r.stdout}`);
});

after(async () => {
  for (const s of servers) await s.stop();
});

/** The document's operations, keyed "METHOD /normalised/{}". */
function documented() {
  const ops = new Map();
  for (const [p, item] of Object.entries(doc.paths)) {
    for (const m of METHODS) if (item[m]) ops.set(`${m.toUpperCase()} ${norm(p)}`, { path: p, op: item[m] });
  }
  return ops;
}

test('the document is valid OpenAPI 3.1 (every $ref resolves)', async () => {
  const v = new Validator();
  const res = await v.validate(doc);
  assert.equal(v.version, '3.1');
  assert.deepEqual(res, { valid: true });
});

test('--routes prints one "METHOD PATH public|auth" line per route', () => {
  for (const r of routes) {
    assert.match(r.method, /^[A-Z]+$/);
    assert.match(r.path, /^\//);
    assert.ok(r.auth === 'public' || r.auth === 'auth', JSON.stringify(r));
  }
  const keys = routes.map((r) => `${r.method} ${r.path}`);
  assert.ok(keys.includes('POST /api/v1/chat'));
  assert.ok(keys.includes('POST /api/v1/debug/echo'), 'the optional routes are switched on');
  assert.equal(new Set(keys).size, keys.length, 'no route twice');
});

test('every route in the router is in the document, with its security', () => {
  const ops = documented();
  const missing = [];
  for (const r of routes) {
    const key = `${r.method} ${norm(r.path)}`;
    const d = ops.get(key);
    if (!d) {
      missing.push(`${r.method} ${r.path}`);
      continue;
    }
    const security = d.op.security ?? doc.security;
    if (r.auth === 'public') assert.deepEqual(security, [], `${key} is public: security must be []`);
    else assert.ok(security.length > 0 && security.every((s) => Object.keys(s).length > 0), `${key} needs a credential`);
  }
  assert.deepEqual(missing, [], `routes missing from ${DOC_PATH}`);
});

test('nothing in the document is a route the server lacks (OPTIONS: the CORS preflight, on every path)', () => {
  const have = new Set(routes.map((r) => `${r.method} ${norm(r.path)}`));
  const extra = [];
  for (const [key, { path: p }] of documented()) {
    if (key.startsWith('OPTIONS ')) continue;
    if (!have.has(key)) extra.push(key);
    assert.ok(doc.paths[p].options, `${p} describes its preflight`);
  }
  assert.deepEqual(extra, []);
});

test('operation ids are unique; every path parameter is declared', () => {
  const ids = new Set();
  for (const [p, item] of Object.entries(doc.paths)) {
    const names = [...p.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
    const declared = (item.parameters || []).map((x) =>
      x.$ref ? doc.components.parameters[x.$ref.split('/').pop()].name : x.name,
    );
    assert.deepEqual(declared.sort(), names.sort(), `${p}: path parameters at the path level`);
    for (const m of METHODS) {
      const id = item[m]?.operationId;
      if (!id) continue;
      assert.ok(!ids.has(id), `operationId ${id} twice`);
      ids.add(id);
    }
  }
});

test('ErrorCode lists exactly the codes of src/base/err.c, each with its status', async () => {
  const src = readFileSync(path.resolve(here, '../../src/base/err.c'), 'utf8');
  const table = [...src.matchAll(/\{"([A-Z_]+)", (\d{3})\}/g)].map((m) => [m[1], m[2]]);
  assert.ok(table.length > 10, 'err.c table parsed');
  const schema = doc.components.schemas.ErrorCode;
  assert.deepEqual([...new Set(table.map(([c]) => c))].sort(), [...schema.enum].sort());
  for (const [code, status] of table) assert.match(schema.description, new RegExp(`${code} ${status}|${code} [^,]*\\b${status}\\b`), `${code} ${status}`);
  // and one real answer has the envelope's shape
  const s = await startServer();
  servers.push(s);
  const r = await get(s.port, '/no/such/route');
  assert.equal(r.status, 404);
  const body = JSON.parse(r.text);
  assert.equal(body.error.code, 'NOT_FOUND');
  for (const k of doc.components.schemas.ErrorEnvelope.required) assert.ok(k in body, `envelope has ${k}`);
});

test('GET /openapi.json serves the document as application/json', async () => {
  const s = servers[0] || (await startServer());
  if (!servers.includes(s)) servers.push(s);
  const r = await get(s.port, '/openapi.json');
  assert.equal(r.status, 200);
  assert.match(r.headers['content-type'], /^application\/json/);
  assert.deepEqual(JSON.parse(r.text), doc);
  assert.equal(r.text, readFileSync(DOC_PATH, 'utf8'), 'byte for byte the file in the repo');
});

test('/docs without Swagger UI installed: 200 with a page saying how to get it', async () => {
  const empty = mkdtempSync(path.join(tmpdir(), 'chatloop-nodocs-'));
  try {
    const s = await startServer({ docsDir: empty });
    servers.push(s);
    const r = await get(s.port, '/docs');
    assert.equal(r.status, 200);
    assert.match(r.headers['content-type'], /^text\/html/);
    assert.match(r.text, /make docs/);
    assert.match(r.text, /scripts\/docs-assets\.sh/);
    assert.ok(r.text.includes(`${empty}/swagger-ui-bundle.js`), 'names the missing file');
    assert.doesNotMatch(r.text, /swagger-ui-bundle\.js"><\/script>/);
    assert.equal((await get(s.port, '/docs/swagger-ui-bundle.js')).status, 404);
    assert.equal((await get(s.port, '/docs/init.js')).status, 200, 'the built-in script is always there');
  } finally {
    rmSync(empty, { recursive: true, force: true });
  }
});

test('/docs with its files: the page loads them from /docs/ and points at /openapi.json', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'chatloop-docs-'));
  try {
    const bundle = '/* a stand-in for swagger-ui-bundle.js */ window.SwaggerUIBundle = function () {};\n';
    writeFileSync(path.join(dir, 'swagger-ui-bundle.js'), bundle);
    writeFileSync(path.join(dir, 'swagger-ui.css'), 'body { margin: 0 }\n');
    writeFileSync(path.join(dir, 'index.html'), 'not served');
    const s = await startServer({ docsDir: dir });
    servers.push(s);
    // read at startup: a change on disk afterwards is not seen
    writeFileSync(path.join(dir, 'swagger-ui-bundle.js'), 'changed');
    const page = await get(s.port, '/docs');
    assert.equal(page.status, 200);
    assert.match(page.headers['content-type'], /^text\/html/);
    assert.match(page.text, /<script src="\/docs\/swagger-ui-bundle\.js"><\/script>/);
    assert.match(page.text, /<link rel="stylesheet" href="\/docs\/swagger-ui\.css">/);
    assert.doesNotMatch(page.text, /<script>/, 'no inline script');
    const js = await get(s.port, '/docs/swagger-ui-bundle.js');
    assert.equal(js.status, 200);
    assert.match(js.headers['content-type'], /^text\/javascript/);
    assert.equal(js.text, bundle);
    const css = await get(s.port, '/docs/swagger-ui.css');
    assert.match(css.headers['content-type'], /^text\/css/);
    const init = await get(s.port, '/docs/init.js');
    assert.match(init.text, /url: '\/openapi\.json'/);
    assert.match(init.text, /validatorUrl: null/);
    for (const p of ['/docs/index.html', '/docs/favicon-16x16.png', '/docs/..%2fopenapi.json', '/docs/%2e%2e']) {
      assert.equal((await get(s.port, p)).status, 404, p);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
