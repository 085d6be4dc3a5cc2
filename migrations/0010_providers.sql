-- Provider keys per org (one per provider), AES-256-GCM encrypted with the id of the key that sealed
-- them, and an API's route to its models: one provider with the org's key, or each `provider/model`
-- name to its provider (NULL: the API's own base URL, as before).
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
ALTER TABLE apis ADD COLUMN upstream_route_json TEXT;
