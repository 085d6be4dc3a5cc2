-- Which provider answered a request, and every try it made upstream (retries and fallbacks).
ALTER TABLE usage_records ADD COLUMN provider TEXT;
ALTER TABLE usage_records ADD COLUMN attempts_json TEXT NOT NULL DEFAULT '[]';
