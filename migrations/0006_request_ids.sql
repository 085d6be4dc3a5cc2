-- Which endpoint a usage record is for (chat, responses, embeddings, messages), and the request id
-- the upstream gave its answer (the record's own id is the gateway's request id).
ALTER TABLE usage_records ADD COLUMN endpoint TEXT NOT NULL DEFAULT 'chat';
ALTER TABLE usage_records ADD COLUMN upstream_request_id TEXT;
