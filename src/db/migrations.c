/*
 * migrations.c — the schema, as versioned migrations embedded in the binary.
 * See migrations.h for the rules; cl_db_migrate applies them.
 *
 * User scoping in the schema itself: every table has user_id, and where a row
 * points at another user-owned row (a message's conversation, a chunk's
 * document, a conversation's agent, a usage event's conversation) the foreign
 * key is on (id, user_id), so the database refuses a row that would point at
 * another user's data even if a query forgot to check. `ON DELETE SET NULL
 * (col)` (PostgreSQL 15) clears only the pointer, never user_id.
 *
 * Indexes follow the queries:
 *   conversations  list newest first, keyset paginated:
 *                  WHERE user_id = $1 AND (updated_at, id) < ($2, $3)
 *                  ORDER BY updated_at DESC, id DESC LIMIT n
 *                  lookup by client session key: UNIQUE (user_id, session_key)
 *   messages       history in order: WHERE conversation_id = $1
 *                  ORDER BY created_at DESC, id DESC LIMIT n (backward scan)
 *   usage_events   per model and day: WHERE user_id = $1 AND created_at >= $2
 *   document_chunks  retrieval: tsv @@ websearch_to_tsquery('english', $q)
 *                  AND user_id = $1 [AND collection = $2], ranked by ts_rank
 * messages has no index on user_id alone: it is written on every turn and
 * read by conversation; only deleting a user (rare) scans it.
 */
#include "migrations.h"

static const char m0001_initial[] =
    "CREATE TABLE users (\n"
    "    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
    "    email         text NOT NULL,\n"
    "    password_hash text NOT NULL,\n"
    "    created_at    timestamptz NOT NULL DEFAULT now()\n"
    ");\n"
    "-- emails compare case-insensitively: look users up by lower(email)\n"
    "CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));\n"
    "\n"
    "CREATE TABLE api_keys (\n"
    "    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
    "    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    name         text,\n"
    "    key_hash     text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'), -- sha256 hex\n"
    "    prefix       text NOT NULL,            -- the first characters, shown to the user\n"
    "    created_at   timestamptz NOT NULL DEFAULT now(),\n"
    "    last_used_at timestamptz,\n"
    "    revoked_at   timestamptz\n"
    ");\n"
    "CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);\n"
    "\n"
    "CREATE TABLE agents (\n"
    "    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
    "    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    name             text NOT NULL,\n"
    "    system_prompt    text,\n"
    "    model            text,\n"
    "    temperature      double precision,\n"
    "    max_tokens       int,\n"
    "    top_p            double precision,\n"
    "    reasoning_effort text,\n"
    "    k                int NOT NULL DEFAULT 0,\n"
    "    tools            jsonb NOT NULL DEFAULT '[]',\n"
    "    created_at       timestamptz NOT NULL DEFAULT now(),\n"
    "    updated_at       timestamptz NOT NULL DEFAULT now(),\n"
    "    UNIQUE (id, user_id)\n"
    ");\n"
    "CREATE INDEX agents_user_created_idx ON agents (user_id, created_at DESC);\n"
    "\n"
    "CREATE TABLE conversations (\n"
    "    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
    "    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    session_key   text,                     -- the client's session_id, when keyed\n"
    "    title         text,\n"
    "    agent_id      uuid,\n"
    "    system_prompt text,\n"
    "    model         text,\n"
    "    created_at    timestamptz NOT NULL DEFAULT now(),\n"
    "    updated_at    timestamptz NOT NULL DEFAULT now(),\n"
    "    UNIQUE (user_id, session_key),          -- NULL keys do not collide\n"
    "    UNIQUE (id, user_id),\n"
    "    FOREIGN KEY (agent_id, user_id) REFERENCES agents (id, user_id)\n"
    "        ON DELETE SET NULL (agent_id)\n"
    ");\n"
    "CREATE INDEX conversations_user_updated_idx ON conversations (user_id, updated_at DESC, id DESC);\n"
    "\n"
    "CREATE TABLE messages (\n"
    "    id                uuid PRIMARY KEY,     -- made by the server before the write\n"
    "    conversation_id   uuid NOT NULL,\n"
    "    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    role              text NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),\n"
    "    content           text NOT NULL DEFAULT '',\n"
    "    status            text NOT NULL DEFAULT 'complete'\n"
    "                      CHECK (status IN ('complete', 'cancelled', 'error')),\n"
    "    tool_calls        jsonb,\n"
    "    model             text,\n"
    "    prompt_tokens     int,\n"
    "    completion_tokens int,\n"
    "    error             text,\n"
    "    created_at        timestamptz NOT NULL, -- set by the server: the turn's order\n"
    "    FOREIGN KEY (conversation_id, user_id) REFERENCES conversations (id, user_id)\n"
    "        ON DELETE CASCADE\n"
    ");\n"
    "CREATE INDEX messages_conversation_created_idx ON messages (conversation_id, created_at, id);\n"
    "\n"
    "CREATE TABLE usage_events (\n"
    "    id                bigserial PRIMARY KEY,\n"
    "    user_id           uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    idempotency_key   text NOT NULL UNIQUE, -- a retried write never counts twice\n"
    "    conversation_id   uuid,\n"
    "    message_id        uuid,                 -- no foreign key: usage outlives messages\n"
    "    model             text NOT NULL,\n"
    "    prompt_tokens     int NOT NULL CHECK (prompt_tokens >= 0),\n"
    "    completion_tokens int NOT NULL CHECK (completion_tokens >= 0),\n"
    "    total_tokens      int NOT NULL CHECK (total_tokens >= 0),\n"
    "    estimated         boolean NOT NULL DEFAULT false,\n"
    "    source            text NOT NULL,        -- 'chat', 'openai', ...\n"
    "    created_at        timestamptz NOT NULL DEFAULT now(),\n"
    "    FOREIGN KEY (conversation_id, user_id) REFERENCES conversations (id, user_id)\n"
    "        ON DELETE SET NULL (conversation_id)\n"
    ");\n"
    "CREATE INDEX usage_events_user_created_idx ON usage_events (user_id, created_at);\n"
    "\n"
    "CREATE TABLE tasks (\n"
    "    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
    "    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    title       text NOT NULL,\n"
    "    description text,\n"
    "    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),\n"
    "    due_at      timestamptz,\n"
    "    created_at  timestamptz NOT NULL DEFAULT now(),\n"
    "    updated_at  timestamptz NOT NULL DEFAULT now()\n"
    ");\n"
    "CREATE INDEX tasks_user_created_idx ON tasks (user_id, created_at DESC);\n"
    "\n"
    "CREATE TABLE documents (\n"
    "    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),\n"
    "    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    title      text NOT NULL,\n"
    "    collection text NOT NULL DEFAULT 'default',\n"
    "    content    text NOT NULL,\n"
    "    created_at timestamptz NOT NULL DEFAULT now(),\n"
    "    UNIQUE (id, user_id)\n"
    ");\n"
    "CREATE INDEX documents_user_collection_idx ON documents (user_id, collection);\n"
    "\n"
    "CREATE TABLE document_chunks (\n"
    "    id          bigserial PRIMARY KEY,\n"
    "    document_id uuid NOT NULL,\n"
    "    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    collection  text NOT NULL,\n"
    "    seq         int NOT NULL,               -- the chunk's position in the document\n"
    "    content     text NOT NULL,\n"
    "    tsv         tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,\n"
    "    UNIQUE (document_id, seq),              -- also serves the cascade from documents\n"
    "    FOREIGN KEY (document_id, user_id) REFERENCES documents (id, user_id)\n"
    "        ON DELETE CASCADE\n"
    ");\n"
    "CREATE INDEX document_chunks_tsv_idx ON document_chunks USING gin (tsv);\n"
    "CREATE INDEX document_chunks_user_collection_idx ON document_chunks (user_id, collection);\n";

/* Issue 11: API keys bill under their key, agents get a collection and
 * unique names, and the rate limits live here so every worker and every
 * instance sharing the database sees one budget per user (and per client
 * address on the auth routes).
 *
 * user_limits: one row per user. `tat` is the GCRA theoretical arrival
 * time of the chat-turn bucket (a turn is allowed when tat - now() leaves
 * room for one more within a minute's burst); `leases` maps the running
 * turns' ids to when their lease lapses, so a worker killed mid-turn
 * cannot hold a user's concurrency slot for longer than a turn may run.
 * ip_limits: the same bucket keyed by client address, for register and
 * login; rows whose tat has passed mean "full bucket" and are pruned. */
static const char m0002_keys_agents_limits[] =
    "ALTER TABLE usage_events ADD COLUMN api_key_id uuid; -- no foreign key: usage outlives keys\n"
    "ALTER TABLE agents ADD COLUMN collection text;\n"
    "CREATE UNIQUE INDEX agents_user_name_key ON agents (user_id, name);\n"
    "\n"
    "CREATE TABLE user_limits (\n"
    "    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,\n"
    "    tat     timestamptz NOT NULL DEFAULT now(),\n"
    "    leases  jsonb NOT NULL DEFAULT '{}'\n"
    ");\n"
    "\n"
    "CREATE TABLE ip_limits (\n"
    "    addr text PRIMARY KEY,\n"
    "    tat  timestamptz NOT NULL DEFAULT now()\n"
    ");\n"
    "CREATE INDEX ip_limits_tat_idx ON ip_limits (tat);\n";

const cl_migration cl_migrations[] = {
    { 1, "0001_initial", m0001_initial },
    { 2, "0002_keys_agents_limits", m0002_keys_agents_limits },
};

const size_t cl_migration_count = sizeof cl_migrations / sizeof cl_migrations[0];
