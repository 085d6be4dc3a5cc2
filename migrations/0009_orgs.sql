-- Owner accounts and orgs: every project belongs to an org; owners are members of orgs with a role;
-- orgs have API keys (ask-prod-/ask-dev-, stored hashed) and an audit log of admin writes. Projects
-- made before orgs existed move to the default org, which the instance operator (ADMIN_TOKEN) holds.
CREATE TABLE orgs (
  id          TEXT PRIMARY KEY,
  slug        TEXT NOT NULL UNIQUE,
  name        TEXT NOT NULL,
  created_at  INTEGER NOT NULL
);
INSERT INTO orgs (id, slug, name, created_at)
  VALUES ('org_default', 'default', 'Default org', CAST(strftime('%s', 'now') AS INTEGER) * 1000);

CREATE TABLE owners (
  id          TEXT PRIMARY KEY,
  email       TEXT NOT NULL UNIQUE,
  name        TEXT NOT NULL,
  created_at  INTEGER NOT NULL
);

CREATE TABLE org_members (
  id          TEXT PRIMARY KEY,
  org_id      TEXT NOT NULL REFERENCES orgs(id),
  owner_id    TEXT REFERENCES owners(id),
  email       TEXT NOT NULL,
  role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'developer', 'viewer')),
  status      TEXT NOT NULL CHECK (status IN ('invited', 'active')),
  invited_by  TEXT,
  created_at  INTEGER NOT NULL,
  joined_at   INTEGER,
  UNIQUE (org_id, email)
);
CREATE INDEX org_members_by_owner ON org_members (owner_id);
CREATE INDEX org_members_invited ON org_members (email) WHERE status = 'invited';

CREATE TABLE org_keys (
  id            TEXT PRIMARY KEY,
  org_id        TEXT NOT NULL REFERENCES orgs(id),
  name          TEXT NOT NULL,
  prefix        TEXT NOT NULL,
  key_hash      TEXT NOT NULL UNIQUE,
  role          TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'developer', 'viewer')),
  environment   TEXT NOT NULL CHECK (environment IN ('prod', 'dev')),
  created_by    TEXT NOT NULL,
  created_at    INTEGER NOT NULL,
  last_used_at  INTEGER,
  revoked_at    INTEGER
);
CREATE INDEX org_keys_by_org ON org_keys (org_id, created_at);

CREATE TABLE audit_events (
  id          TEXT PRIMARY KEY,
  org_id      TEXT NOT NULL,
  created_at  INTEGER NOT NULL,
  actor_type  TEXT NOT NULL,
  actor_id    TEXT,
  actor       TEXT NOT NULL,
  action      TEXT NOT NULL,
  target      TEXT NOT NULL,
  status      INTEGER NOT NULL,
  ip          TEXT
);
CREATE INDEX audit_events_by_org_time ON audit_events (org_id, created_at);

ALTER TABLE projects ADD COLUMN org_id TEXT NOT NULL DEFAULT 'org_default';
CREATE INDEX projects_by_org ON projects (org_id, created_at);
