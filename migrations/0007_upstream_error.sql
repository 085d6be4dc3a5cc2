-- What the upstream said when it failed (its error message, or the connection's failure): shown to
-- the owner in usage records, never to the end user.
ALTER TABLE usage_records ADD COLUMN upstream_error TEXT;
