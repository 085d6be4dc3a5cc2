-- Sluice's D1 schema, whole and readable. The migrations in migrations/ build exactly this.
-- Times are epoch milliseconds (UTC). Secrets are never stored in the clear.

-- An org: the owners' team. It owns projects, has members with roles, API keys and an audit log. The
-- default org holds the projects made before orgs existed (and the instance operator's).
CREATE TABLE orgs (
  id          TEXT PRIMARY KEY,
  slug        TEXT NOT NULL UNIQUE,
  name        TEXT NOT NULL,
  created_at  INTEGER NOT NULL
);

-- An owner account (signs in by email code; dev login in dev mode).
CREATE TABLE owners (
  id          TEXT PRIMARY KEY,
  email       TEXT NOT NULL UNIQUE,
  name        TEXT NOT NULL,
  created_at  INTEGER NOT NULL
);

-- An org's members: invited by email (owner_id NULL) until their next sign-in makes them active.
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

-- Org API keys (ask-prod-/ask-dev-...): only the SHA-256 is kept, plus a short display prefix.
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

-- An org's provider keys (one per provider): AES-256-GCM encrypted (`v2:<key id>:...`), with the
-- key's last 4 characters for listings and an optional base URL that overrides the provider's.
CREATE TABLE provider_keys (
  org_id      TEXT NOT NULL REFERENCES orgs(id),
  provider    TEXT NOT NULL CHECK (provider IN ('openai', 'anthropic', 'groq', 'mistral', 'cohere', 'ollama')),
  base_url    TEXT,
  key_enc     TEXT,
  key_last4   TEXT,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL,
  PRIMARY KEY (org_id, provider)
);

-- Admin writes: who (actor and credential type), what (the route), on which path, with what status.
CREATE TABLE audit_events (
  id          TEXT PRIMARY KEY,
  org_id      TEXT NOT NULL,
  created_at  INTEGER NOT NULL,
  actor_type  TEXT NOT NULL,                       -- owner, org_key, operator
  actor_id    TEXT,
  actor       TEXT NOT NULL,                       -- the owner's email, the key's name, or `operator`
  action      TEXT NOT NULL,                       -- e.g. POST /api/v1/projects/{project}/consumers
  target      TEXT NOT NULL,                       -- the path as called
  status      INTEGER NOT NULL,
  ip          TEXT
);
CREATE INDEX audit_events_by_org_time ON audit_events (org_id, created_at);

-- An owner's project: the namespace of its APIs and consumers.
CREATE TABLE projects (
  id          TEXT PRIMARY KEY,
  slug        TEXT NOT NULL UNIQUE,
  name        TEXT NOT NULL,
  created_at  INTEGER NOT NULL,
  -- Managed sign-in: access-token lifetime, the sign-in mail, allowed browser origins (CORS), and the
  -- generation of the token-signing key (derived from ENCRYPTION_KEY, never stored).
  access_token_ttl_s       INTEGER NOT NULL DEFAULT 900,
  email_from               TEXT,
  email_subject            TEXT,
  allowed_origins_json     TEXT NOT NULL DEFAULT '[]',
  signing_generation       INTEGER NOT NULL DEFAULT 1,
  previous_key_retired_at  INTEGER,
  sign_in_json             TEXT NOT NULL DEFAULT '{}', -- OTP limits, sign-up policy, event retention
  org_id                   TEXT NOT NULL DEFAULT 'org_default'  -- the org that owns it (orgs.id)
);
CREATE INDEX projects_by_org ON projects (org_id, created_at);

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
  byo_jwt_json       TEXT,                          -- byo-jwt: {jwks_url, user_id_claim, issuer?, audience?, algorithms?}
  ip_allowlist_json  TEXT NOT NULL DEFAULT '[]',    -- CIDRs; empty allows every address
  credential_json    TEXT NOT NULL DEFAULT '{}',    -- {location: authorization|header|query, name?, passthrough}
  upstream_policy_json TEXT NOT NULL DEFAULT '{}',  -- {allow_any_model, max_n, allowed_params, image_tokens, max_tokens_field}
  prices_json        TEXT NOT NULL DEFAULT '{}',    -- {model: {input, output, cached_input}} in pico-dollars per token
  upstream_route_json TEXT,                         -- {kind: provider, provider} | {kind: by_model}; NULL: upstream_base_url
  mtls               TEXT NOT NULL DEFAULT 'off' CHECK (mtls IN ('off', 'accept', 'require')), -- client certificates (0013)
  oauth_json         TEXT NOT NULL DEFAULT '{}',    -- {oauth, required_scopes}: OAuth tokens accepted, scopes required
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
  created_at   INTEGER NOT NULL,
  email        TEXT                                 -- kind 'user': the normalised email
);
CREATE INDEX consumers_by_project ON consumers (project_id, created_at);
CREATE UNIQUE INDEX consumers_by_email ON consumers (project_id, email) WHERE email IS NOT NULL;

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

-- A plan of an API; a NULL limit is unlimited. Each API has exactly one default plan.
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
  spend_per_day_micro     INTEGER,                   -- money budgets in micro-dollars
  spend_per_month_micro   INTEGER,
  UNIQUE (api_id, name)
);
CREATE UNIQUE INDEX plans_one_default_per_api ON plans (api_id) WHERE is_default = 1;

-- A consumer subscribed to a plan other than the API's default.
CREATE TABLE subscriptions (
  api_id       TEXT NOT NULL REFERENCES apis(id),
  consumer_id  TEXT NOT NULL,
  plan_id      TEXT NOT NULL REFERENCES plans(id),
  updated_at   INTEGER NOT NULL,
  PRIMARY KEY (api_id, consumer_id)
);

-- One record per admitted request, flushed from the counter Durable Objects (id = the request's lease).
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
  ttft_ms            INTEGER,
  ended              TEXT NOT NULL DEFAULT 'complete', -- complete, budget_cut, upstream_cut, client_gone, abandoned, ...
  cached_tokens      INTEGER NOT NULL DEFAULT 0,
  reasoning_tokens   INTEGER NOT NULL DEFAULT 0,
  n                  INTEGER NOT NULL DEFAULT 1,
  max_tokens         INTEGER,                           -- the completion cap per choice sent upstream
  prompt_bound       INTEGER NOT NULL DEFAULT 0,        -- the prompt's upper bound reserved before the call
  cost_micro         INTEGER NOT NULL DEFAULT 0,
  overrun            INTEGER NOT NULL DEFAULT 0,        -- the upstream used more than was reserved
  endpoint           TEXT NOT NULL DEFAULT 'chat',      -- chat, responses, embeddings, messages
  upstream_request_id TEXT,                             -- the upstream's x-request-id, when it sent one
  upstream_error     TEXT,                              -- what the upstream said when it failed (owner only)
  provider           TEXT,                              -- the provider that answered (provider routes)
  attempts_json      TEXT NOT NULL DEFAULT '[]'         -- every try upstream: [{model, provider?, status, error?, ms}]
);
CREATE INDEX usage_by_api_time ON usage_records (api_id, created_at);

-- Requests refused for a limit (429), per API, consumer and UTC day (each counter's running count).
CREATE TABLE refusals (
  api_id       TEXT NOT NULL,
  consumer_id  TEXT NOT NULL,
  day          TEXT NOT NULL,
  count        INTEGER NOT NULL,
  PRIMARY KEY (api_id, consumer_id, day)
);

-- Sign-ins, failed codes, refreshes, refresh reuse, keys created/revoked, mode switches.
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

-- Consumers' own JWT credentials: a generated HS256 key (encrypted) or a pasted JWKS; the token names
-- its consumer with a payload claim.
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

-- Consumers' client certificates (mTLS, 0013): by SHA-256 fingerprint (lowercase hex), or by issuer and
-- subject DN (compared exactly).
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
-- OAuth 2.1 clients of a project: public (PKCE only) or confidential (a hashed secret, and a consumer
-- of their own for client_credentials). Redirect URIs are matched exactly.
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

-- OAuth grants: one per chain of tokens (its id is the grant's session id, whose Durable Object holds
-- the exact state: the code, rotation, revocation). Listed and revoked by the end user and the owner.
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
