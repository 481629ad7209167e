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
    /* A user's token bucket, split into shards when the rate is high so
     * that one busy user's turns do not queue on one row lock (each shard
     * holds its share of the rate and burst; see chatloop_take_turn). Its
     * updates touch no indexed column: HOT, room kept by the fillfactor. */
    "CREATE TABLE user_limits (\n"
    "    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    shard   int NOT NULL DEFAULT 0,\n"
    "    tat     timestamptz NOT NULL DEFAULT now(),\n"
    "    PRIMARY KEY (user_id, shard)\n"
    ") WITH (fillfactor = 50);\n"
    "\n"
    /* The places a user's running turns hold under max_turns_per_user:
     * numbered 0 .. max - 1, so the cap is the numbering itself; a place
     * is free when its lease is NULL or lapsed (its instance died
     * mid-turn). Taking and giving one back touch no indexed column (HOT),
     * and a turn only ever writes the place it holds: busy users do not
     * queue on one counter, and the table does not bloat with churn. */
    "CREATE TABLE turn_slots (\n"
    "    user_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,\n"
    "    slot      int NOT NULL,\n"
    "    lease     text,\n"
    "    lapses_at timestamptz NOT NULL DEFAULT now(),\n"
    "    PRIMARY KEY (user_id, slot)\n"
    ") WITH (fillfactor = 50);\n"
    "\n"
    "CREATE TABLE ip_limits (\n"
    "    addr text PRIMARY KEY,\n"
    "    tat  timestamptz NOT NULL DEFAULT now()\n"
    ");\n"
    "CREATE INDEX ip_limits_tat_idx ON ip_limits (tat);\n"
    "\n"
    /* The limits as functions, so the turn's one statement (and the relay's
     * and the auth routes') call them without a round trip of their own.
     *
     * Rate, GCRA: `tat` is when a bucket is full again; a turn costs
     * `interval_us` and is allowed while tat - now stays within `burst_us`
     * (the bucket). Past 600 turns a minute the bucket is split into up to
     * 16 shards, each with its share; a turn takes from the first shard it
     * can lock without waiting (SKIP LOCKED) that has room, so the sum
     * never passes the limit and busy users do not serialize on one row.
     *
     * Concurrency: a turn takes the first free place it can lock without
     * waiting (SKIP LOCKED), or makes the next one while there are fewer
     * than the cap; it writes it only once the rate allowed the turn, so a
     * refused turn leaves nothing. `holder` is the place's number, which
     * chatloop_end_turn takes with the user and the lease (the turn's id). */
    "CREATE FUNCTION chatloop_take_turn(p_user uuid, p_interval_us int, p_burst_us int,\n"
    "    p_max int, p_lease text, p_lapse_s int,\n"
    "    OUT allowed boolean, OUT which text, OUT retry_after_ms int, OUT holder text)\n"
    "LANGUAGE plpgsql AS $$\n"
    "DECLARE\n"
    "    place int;\n"
    "    n int;\n"
    "    k int;\n"
    "    shards int;\n"
    "    s0 int;\n"
    "    s int;\n"
    "    i int;\n"
    "    cur timestamptz;\n"
    "    next_tat timestamptz;\n"
    "    cost interval;\n"
    "    bucket interval;\n"
    "    wait interval;\n"
    "    taken boolean := false;\n"
    "BEGIN\n"
    "    allowed := true;\n"
    "    IF p_max > 0 THEN\n"
    "        SELECT slot INTO place FROM turn_slots\n"
    "            WHERE user_id = p_user AND (lease IS NULL OR lapses_at < now())\n"
    "            ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED;\n"
    "        IF NOT FOUND THEN\n"
    "            SELECT count(*) INTO n FROM turn_slots WHERE user_id = p_user;\n"
    "            FOR k IN n .. p_max - 1 LOOP\n"
    "                INSERT INTO turn_slots (user_id, slot) VALUES (p_user, k) ON CONFLICT DO NOTHING;\n"
    "                IF FOUND THEN\n"
    "                    place := k;\n"
    "                    EXIT;\n"
    "                END IF;\n"
    "            END LOOP;\n"
    "            IF place IS NULL THEN\n"
    "                allowed := false;\n"
    "                which := 'concurrent';\n"
    "                retry_after_ms := 1000;\n"
    "                RETURN;\n"
    "            END IF;\n"
    "        END IF;\n"
    "    END IF;\n"
    "    IF p_interval_us > 0 THEN\n"
    "        shards := greatest(1, least(16, (60000000 / p_interval_us) / 600));\n"
    "        cost := p_interval_us * shards * interval '1 microsecond';\n"
    "        bucket := p_burst_us * interval '1 microsecond';\n"
    "        s0 := CASE WHEN shards = 1 THEN 0 ELSE floor(random() * shards)::int END;\n"
    "        -- first without waiting for a busy shard, then waiting for the first one\n"
    "        FOR i IN 0 .. shards LOOP\n"
    "            s := (s0 + i) % shards;\n"
    "            IF i < shards THEN\n"
    "                SELECT tat INTO cur FROM user_limits\n"
    "                    WHERE user_id = p_user AND shard = s FOR UPDATE SKIP LOCKED;\n"
    "                IF NOT FOUND THEN\n"
    "                    INSERT INTO user_limits (user_id, shard) VALUES (p_user, s)\n"
    "                        ON CONFLICT DO NOTHING;\n"
    "                    IF NOT FOUND THEN\n"
    "                        CONTINUE; -- it exists: locked by another turn\n"
    "                    END IF;\n"
    "                    SELECT tat INTO cur FROM user_limits\n"
    "                        WHERE user_id = p_user AND shard = s FOR UPDATE;\n"
    "                END IF;\n"
    "            ELSE\n"
    "                SELECT tat INTO cur FROM user_limits\n"
    "                    WHERE user_id = p_user AND shard = s FOR UPDATE;\n"
    "            END IF;\n"
    "            next_tat := greatest(cur, now()) + cost;\n"
    "            IF next_tat - now() <= bucket THEN\n"
    "                UPDATE user_limits SET tat = next_tat WHERE user_id = p_user AND shard = s;\n"
    "                taken := true;\n"
    "                EXIT;\n"
    "            END IF;\n"
    "            IF wait IS NULL OR next_tat - now() - bucket < wait THEN\n"
    "                wait := next_tat - now() - bucket;\n"
    "            END IF;\n"
    "        END LOOP;\n"
    "        IF NOT taken THEN\n"
    "            allowed := false;\n"
    "            which := 'turn_rate';\n"
    "            retry_after_ms := ceil(extract(epoch FROM coalesce(wait, interval '1 s')) * 1000);\n"
    "            RETURN;\n"
    "        END IF;\n"
    "    END IF;\n"
    "    IF p_max > 0 THEN\n"
    "        UPDATE turn_slots SET lease = p_lease, lapses_at = now() + p_lapse_s * interval '1 s'\n"
    "            WHERE user_id = p_user AND slot = place;\n"
    "        holder := place::text;\n"
    "    END IF;\n"
    "END $$;\n"
    "\n"
    "CREATE FUNCTION chatloop_end_turn(p_user uuid, p_holder text, p_lease text) RETURNS void\n"
    "LANGUAGE sql AS $$\n"
    "    UPDATE turn_slots SET lease = NULL\n"
    "        WHERE user_id = p_user AND slot = p_holder::int AND lease = p_lease\n"
    "$$;\n"
    "\n"
    /* Per client address on register and login; a row whose bucket is full
     * again says nothing an absent row does not, so some are pruned now and
     * then (bounded by the index on tat). */
    "CREATE FUNCTION chatloop_take_auth(p_addr text, p_interval_us int, p_burst_us int,\n"
    "    OUT allowed boolean, OUT retry_after_ms int)\n"
    "LANGUAGE plpgsql AS $$\n"
    "DECLARE\n"
    "    cur timestamptz;\n"
    "    next_tat timestamptz;\n"
    "BEGIN\n"
    "    IF random() < 0.02 THEN\n"
    "        DELETE FROM ip_limits WHERE addr IN\n"
    "            (SELECT addr FROM ip_limits WHERE tat < now() LIMIT 200);\n"
    "    END IF;\n"
    "    INSERT INTO ip_limits (addr) VALUES (p_addr) ON CONFLICT (addr) DO NOTHING;\n"
    "    SELECT tat INTO cur FROM ip_limits WHERE addr = p_addr FOR UPDATE;\n"
    "    next_tat := greatest(cur, now()) + p_interval_us * interval '1 microsecond';\n"
    "    IF next_tat - now() > p_burst_us * interval '1 microsecond' THEN\n"
    "        allowed := false;\n"
    "        retry_after_ms := ceil((extract(epoch FROM next_tat - now()) * 1000000 - p_burst_us) / 1000);\n"
    "        RETURN;\n"
    "    END IF;\n"
    "    UPDATE ip_limits SET tat = next_tat WHERE addr = p_addr;\n"
    "    allowed := true;\n"
    "END $$;\n";

const cl_migration cl_migrations[] = {
    { 1, "0001_initial", m0001_initial },
    { 2, "0002_keys_agents_limits", m0002_keys_agents_limits },
};

const size_t cl_migration_count = sizeof cl_migrations / sizeof cl_migrations[0];
