-- Migration 0013: inbound mTLS. An API's `mtls` setting says whether a client certificate verified by
-- the zone (request.cf.tlsClientAuth) is accepted as a credential (`accept`) or demanded besides the
-- mode's credential (`require`). A consumer's certificates are named by their SHA-256 fingerprint
-- (lowercase hex) or by their issuer and subject DNs.
ALTER TABLE apis ADD COLUMN mtls TEXT NOT NULL DEFAULT 'off' CHECK (mtls IN ('off', 'accept', 'require'));
CREATE TABLE consumer_mtls_credentials (
  id                  TEXT PRIMARY KEY,
  project_id          TEXT NOT NULL REFERENCES projects(id),
  consumer_id         TEXT NOT NULL REFERENCES consumers(id),
  fingerprint_sha256  TEXT,
  issuer_dn           TEXT,
  subject_dn          TEXT,
  created_at          INTEGER NOT NULL,
  revoked_at          INTEGER,
  CHECK ((fingerprint_sha256 IS NOT NULL) OR (issuer_dn IS NOT NULL AND subject_dn IS NOT NULL))
);
CREATE UNIQUE INDEX consumer_mtls_by_fingerprint ON consumer_mtls_credentials (project_id, fingerprint_sha256) WHERE revoked_at IS NULL AND fingerprint_sha256 IS NOT NULL;
CREATE UNIQUE INDEX consumer_mtls_by_dn ON consumer_mtls_credentials (project_id, issuer_dn, subject_dn) WHERE revoked_at IS NULL AND fingerprint_sha256 IS NULL;
