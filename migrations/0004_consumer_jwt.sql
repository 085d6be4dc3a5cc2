-- Migration 0004: consumers authenticating with JWTs of their own (seed 004): a symmetric key Sluice
-- generates (HS256, encrypted at rest, shown once) or a JWKS the owner pastes. The token names its
-- consumer with a payload claim (`claim_name` = `claim_value`, e.g. uid = 1121...).
CREATE TABLE consumer_jwt_credentials (
  id             TEXT PRIMARY KEY,
  project_id     TEXT NOT NULL REFERENCES projects(id),
  consumer_id    TEXT NOT NULL REFERENCES consumers(id),
  kind           TEXT NOT NULL CHECK (kind IN ('symmetric', 'asymmetric')),
  claim_name     TEXT NOT NULL,
  claim_value    TEXT NOT NULL,
  secret_enc     TEXT,
  secret_prefix  TEXT,
  jwks_json      TEXT,
  created_at     INTEGER NOT NULL,
  revoked_at     INTEGER
);
CREATE UNIQUE INDEX consumer_jwt_by_claim ON consumer_jwt_credentials (project_id, claim_value, claim_name) WHERE revoked_at IS NULL;
