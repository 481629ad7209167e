// Real answers against the OpenAPI document's schemas: each route's answer,
// as a client gets it from chatloop with a real PostgreSQL and chatloop-mock
// upstream, validates against the response schema the document gives for
// that route and status (JSON Schema 2020-12, formats checked). So the
// document's schemas cannot drift from what the handlers write.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before } from 'node:test';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { makeTest } from './lib/server.mjs';
import { startMock } from './lib/mock.mjs';
import { stopAll } from './lib/llm.mjs';
import { startPg } from './lib/pg.mjs';
import { api, newUser, startChatServer } from './lib/chat.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const doc = JSON.parse(readFileSync(path.resolve(here, '../../src/http/assets/openapi.json'), 'utf8'));

// strict off: the document's schemas carry OpenAPI's own annotations
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema(doc, 'openapi.json');

let pg, mock, srv;
const test = makeTest(() => [srv]);

before(async () => {
  pg = await startPg();
  mock = await startMock({ mockTokens: 4, mockTokenInterval: 1, mockFirstToken: 0 });
  srv = await startChatServer(mock, pg, { retries: 0 });
});
after(async () => {
  try {
    await stopAll(srv, mock);
  } finally {
    if (pg) await pg.stop();
  }
});

const pointer = (s) => s.replace(/~/g, '~0').replace(/\//g, '~1');

/** Checks res against the document's JSON schema for (method, route, status). */
function conforms(res, method, route, status = res.status) {
  const op = doc.paths[route]?.[method.toLowerCase()];
  assert.ok(op, `${method} ${route} is in the document`);
  let resp = op.responses[String(status)];
  assert.ok(resp, `${method} ${route} documents ${status} (got ${res.text.slice(0, 200)})`);
  let ref = `openapi.json#/paths/${pointer(route)}/${method.toLowerCase()}/responses/${status}`;
  if (resp.$ref) {
    ref = `openapi.json${resp.$ref}`;
    resp = doc.components.responses[resp.$ref.split('/').pop()];
  }
  assert.equal(res.status, status, res.text.slice(0, 300));
  const validate = ajv.getSchema(`${ref}/content/application~1json/schema`);
  assert.ok(validate, `${ref} has a JSON schema`);
  assert.ok(validate(res.j), `${method} ${route} ${status}: ${ajv.errorsText(validate.errors)}\n${res.text.slice(0, 500)}`);
}

test('auth, keys, agents, conversations, a turn and usage answer as the document says', async () => {
  const port = srv.port;
  const email = `live${Date.now()}@example.test`;
  const password = 'correct horse battery';
  conforms(await api(port, 'POST', '/api/v1/auth/register', { body: { email, password } }), 'POST', '/api/v1/auth/register', 201);
  conforms(await api(port, 'POST', '/api/v1/auth/register', { body: { email, password } }), 'POST', '/api/v1/auth/register', 409);
  conforms(await api(port, 'POST', '/api/v1/auth/register', { body: { email: 'x' } }), 'POST', '/api/v1/auth/register', 400);
  const login = await api(port, 'POST', '/api/v1/auth/login', { body: { email, password } });
  conforms(login, 'POST', '/api/v1/auth/login', 200);
  conforms(await api(port, 'POST', '/api/v1/auth/login', { body: { email, password: 'wrong password' } }), 'POST', '/api/v1/auth/login', 401);
  const token = login.j.data.access_token;

  const key = await api(port, 'POST', '/api/v1/keys', { token, body: { name: 'ci' } });
  conforms(key, 'POST', '/api/v1/keys', 201);
  conforms(await api(port, 'GET', '/api/v1/keys', { token }), 'GET', '/api/v1/keys', 200);

  const agent = await api(port, 'POST', '/api/v1/agents', {
    token,
    body: { name: 'support', system_prompt: 'Be brief.', temperature: 0.2, max_tokens: 50, top_p: 0.9, reasoning_effort: 'low', k: 0, tools: ['tasks'] },
  });
  conforms(agent, 'POST', '/api/v1/agents', 201);
  conforms(await api(port, 'POST', '/api/v1/agents', { token, body: { name: 'support' } }), 'POST', '/api/v1/agents', 409);
  conforms(await api(port, 'POST', '/api/v1/agents', { token, body: { name: 'x', temperature: 3 } }), 'POST', '/api/v1/agents', 400);
  conforms(await api(port, 'GET', '/api/v1/agents', { token }), 'GET', '/api/v1/agents', 200);
  const aid = agent.j.data.id;
  conforms(await api(port, 'GET', `/api/v1/agents/${aid}`, { token }), 'GET', '/api/v1/agents/{id}', 200);
  conforms(await api(port, 'PATCH', `/api/v1/agents/${aid}`, { token, body: { model: null } }), 'PATCH', '/api/v1/agents/{id}', 200);

  const conv = await api(port, 'POST', '/api/v1/conversations', { token, body: { title: 'live', agent_id: aid } });
  conforms(conv, 'POST', '/api/v1/conversations', 201);
  const cid = conv.j.data.id;
  const turn = await api(port, 'POST', `/api/v1/conversations/${cid}/messages`, { token, body: { message: 'hello' } });
  conforms(turn, 'POST', '/api/v1/conversations/{id}/messages', 200);
  const chat = await api(port, 'POST', '/api/v1/chat', { token: key.j.data.key, body: { session_id: 's1', message: 'hi' } });
  conforms(chat, 'POST', '/api/v1/chat', 200);
  conforms(await api(port, 'POST', '/api/v1/chat', { token, body: { message: 'no session' } }), 'POST', '/api/v1/chat', 400);
  conforms(await api(port, 'GET', '/api/v1/conversations?limit=1', { token }), 'GET', '/api/v1/conversations', 200);
  conforms(await api(port, 'GET', `/api/v1/conversations/${cid}`, { token }), 'GET', '/api/v1/conversations/{id}', 200);
  conforms(await api(port, 'GET', '/api/v1/usage', { token }), 'GET', '/api/v1/usage', 200);
  conforms(await api(port, 'GET', '/api/v1/models', { token }), 'GET', '/api/v1/models', 200);
  conforms(await api(port, 'GET', '/api/v1/llm/test', { token }), 'GET', '/api/v1/llm/test', 200);
  conforms(await api(port, 'DELETE', `/api/v1/conversations/${cid}`, { token }), 'DELETE', '/api/v1/conversations/{id}', 200);
  conforms(await api(port, 'GET', `/api/v1/conversations/${cid}`, { token }), 'GET', '/api/v1/conversations/{id}', 404);
  conforms(await api(port, 'DELETE', `/api/v1/agents/${aid}`, { token }), 'DELETE', '/api/v1/agents/{id}', 200);
  conforms(await api(port, 'DELETE', `/api/v1/keys/${key.j.data.id}`, { token }), 'DELETE', '/api/v1/keys/{id}', 200);
  conforms(await api(port, 'DELETE', `/api/v1/keys/${key.j.data.id}`, { token }), 'DELETE', '/api/v1/keys/{id}', 404);
  conforms(await api(port, 'GET', '/api/v1/usage'), 'GET', '/api/v1/usage', 401);
  conforms(await api(port, 'GET', '/health'), 'GET', '/health', 200);
});

test('the OpenAI-compatible routes answer as the document says', async () => {
  const { token } = await newUser(srv.port);
  const port = srv.port;
  const body = { messages: [{ role: 'user', content: 'hi' }] };
  conforms(await api(port, 'POST', '/v1/chat/completions', { token, body }), 'POST', '/v1/chat/completions', 200);
  conforms(await api(port, 'POST', '/openai/v1/chat/completions', { token, body: { messages: [] } }), 'POST', '/openai/v1/chat/completions', 400);
  conforms(await api(port, 'POST', '/v1/chat/completions', { body }), 'POST', '/v1/chat/completions', 401);
  conforms(await api(port, 'GET', '/v1/models', { token }), 'GET', '/v1/models', 200);
});
