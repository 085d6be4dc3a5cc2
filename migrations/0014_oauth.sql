-- OAuth 2.1 per project: an API's OAuth settings ({oauth, required_scopes}), the project's clients,
-- and grants (one per chain of tokens: an authorization code's, or a client_credentials token's).
ALTER TABLE apis ADD COLUMN oauth_json TEXT NOT NULL DEFAULT '{}';

CREATE TABLE oauth_clients (
  id                  TEXT PRIMARY KEY,
  project_id          TEXT NOT NULL REFERENCES projects(id),
  name                TEXT NOT NULL,
  type                TEXT NOT NULL CHECK (type IN ('public', 'confidential')),
  redirect_uris_json  TEXT NOT NULL,
  scopes_json         TEXT,
  secret_hash         TEXT,
  consumer_id         TEXT,
  dynamic             INTEGER NOT NULL DEFAULT 0,
  created_at          INTEGER NOT NULL,
  updated_at          INTEGER NOT NULL
);
CREATE INDEX oauth_clients_by_project ON oauth_clients (project_id, created_at);

CREATE TABLE oauth_grants (
  id           TEXT PRIMARY KEY,
  project_id   TEXT NOT NULL,
  client_id    TEXT NOT NULL,
  consumer_id  TEXT NOT NULL,
  grant_type   TEXT NOT NULL,
  scope        TEXT NOT NULL,
  resource     TEXT,
  created_at   INTEGER NOT NULL,
  expires_at   INTEGER NOT NULL,
  revoked_at   INTEGER
);
CREATE INDEX oauth_grants_by_consumer ON oauth_grants (project_id, consumer_id, created_at);
CREATE INDEX oauth_grants_by_client ON oauth_grants (client_id, created_at);
