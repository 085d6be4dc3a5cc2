-- Migration 0001: projects, APIs, consumers and consumer keys (see schema.sql for the whole schema).

-- An owner's project: the namespace of its APIs and consumers.
CREATE TABLE projects (
  id          TEXT PRIMARY KEY,
  slug        TEXT NOT NULL UNIQUE,
  name        TEXT NOT NULL,
  created_at  INTEGER NOT NULL
);

-- A chat API behind the gateway. upstream_key_enc is the provider key, AES-256-GCM encrypted.
CREATE TABLE apis (
  id                 TEXT PRIMARY KEY,
  project_id         TEXT NOT NULL REFERENCES projects(id),
  slug               TEXT NOT NULL,
  name               TEXT NOT NULL,
  auth_mode          TEXT NOT NULL CHECK (auth_mode IN ('managed', 'consumer-key-only', 'byo-jwt')),
  upstream_base_url  TEXT NOT NULL,
  upstream_key_enc   TEXT,
  default_model      TEXT,
  models_json        TEXT NOT NULL DEFAULT '[]',
  timeout_ms         INTEGER NOT NULL,
  created_at         INTEGER NOT NULL,
  updated_at         INTEGER NOT NULL,
  UNIQUE (project_id, slug)
);

-- Whoever calls an API: kind 'key' (made by the owner) or 'user' (signed in through managed mode).
CREATE TABLE consumers (
  id           TEXT PRIMARY KEY,
  project_id   TEXT NOT NULL REFERENCES projects(id),
  kind         TEXT NOT NULL DEFAULT 'key',
  name         TEXT NOT NULL,
  description  TEXT,
  status       TEXT NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
  created_at   INTEGER NOT NULL
);
CREATE INDEX consumers_by_project ON consumers (project_id, created_at);

-- Consumer keys (ask_live_...): only the SHA-256 of the key is kept, plus a short display prefix.
CREATE TABLE consumer_keys (
  id            TEXT PRIMARY KEY,
  project_id    TEXT NOT NULL REFERENCES projects(id),
  consumer_id   TEXT NOT NULL REFERENCES consumers(id),
  name          TEXT NOT NULL,
  prefix        TEXT NOT NULL,
  key_hash      TEXT NOT NULL UNIQUE,
  created_at    INTEGER NOT NULL,
  last_used_at  INTEGER,
  revoked_at    INTEGER
);
CREATE INDEX consumer_keys_by_project ON consumer_keys (project_id, created_at);
