-- Migration 0002: plans, subscriptions and usage records (see schema.sql for the whole schema).

CREATE TABLE plans (
  id                      TEXT PRIMARY KEY,
  api_id                  TEXT NOT NULL REFERENCES apis(id),
  name                    TEXT NOT NULL,
  requests_per_minute     INTEGER,
  requests_per_day        INTEGER,
  tokens_per_day          INTEGER,
  tokens_per_month        INTEGER,
  max_tokens_per_request  INTEGER,
  max_concurrent_streams  INTEGER,
  models_json             TEXT,
  is_default              INTEGER NOT NULL DEFAULT 0,
  created_at              INTEGER NOT NULL,
  updated_at              INTEGER NOT NULL,
  UNIQUE (api_id, name)
);
CREATE UNIQUE INDEX plans_one_default_per_api ON plans (api_id) WHERE is_default = 1;

-- APIs made before plans existed get their unlimited default plan.
INSERT INTO plans (id, api_id, name, is_default, created_at, updated_at)
  SELECT 'pln_' || substr(id, 5), id, 'default', 1, created_at, created_at FROM apis;

CREATE TABLE subscriptions (
  api_id       TEXT NOT NULL REFERENCES apis(id),
  consumer_id  TEXT NOT NULL,
  plan_id      TEXT NOT NULL REFERENCES plans(id),
  updated_at   INTEGER NOT NULL,
  PRIMARY KEY (api_id, consumer_id)
);

CREATE TABLE usage_records (
  id                 TEXT PRIMARY KEY,
  created_at         INTEGER NOT NULL,
  project_id         TEXT NOT NULL,
  api_id             TEXT NOT NULL,
  consumer_id        TEXT NOT NULL,
  key_id             TEXT,
  session_id         TEXT,
  model              TEXT NOT NULL,
  plan               TEXT NOT NULL,
  prompt_tokens      INTEGER NOT NULL,
  completion_tokens  INTEGER NOT NULL,
  total_tokens       INTEGER NOT NULL,
  estimated          INTEGER NOT NULL,
  status             INTEGER NOT NULL,
  latency_ms         INTEGER NOT NULL,
  ttft_ms            INTEGER
);
CREATE INDEX usage_by_api_time ON usage_records (api_id, created_at);
