-- Migration 0003: auth modes (managed sign-in, BYO JWT), CORS origins, IP allowlists, auth events.

-- Per project: access-token lifetime, sign-in mail, allowed browser origins, and the generation of the
-- token-signing key (the key itself is derived from ENCRYPTION_KEY and never stored).
ALTER TABLE projects ADD COLUMN access_token_ttl_s INTEGER NOT NULL DEFAULT 900;
ALTER TABLE projects ADD COLUMN email_from TEXT;
ALTER TABLE projects ADD COLUMN email_subject TEXT;
ALTER TABLE projects ADD COLUMN allowed_origins_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE projects ADD COLUMN signing_generation INTEGER NOT NULL DEFAULT 1;
ALTER TABLE projects ADD COLUMN previous_key_retired_at INTEGER;

-- Per API: the BYO-JWT verifier, the IP allowlist, and where the credential is read from.
ALTER TABLE apis ADD COLUMN byo_jwt_json TEXT;
ALTER TABLE apis ADD COLUMN ip_allowlist_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE apis ADD COLUMN credential_json TEXT NOT NULL DEFAULT '{}';

-- Managed-mode end users are consumers of kind 'user', one per normalised email in a project.
ALTER TABLE consumers ADD COLUMN email TEXT;
CREATE UNIQUE INDEX consumers_by_email ON consumers (project_id, email) WHERE email IS NOT NULL;

CREATE TABLE auth_events (
  id           TEXT PRIMARY KEY,
  project_id   TEXT NOT NULL,
  api_id       TEXT,
  type         TEXT NOT NULL,
  consumer_id  TEXT,
  subject      TEXT,
  ip           TEXT,
  detail       TEXT,
  created_at   INTEGER NOT NULL
);
CREATE INDEX auth_events_by_project_time ON auth_events (project_id, created_at);
