-- Migration 0015: removing a member now revokes the org keys they made (and the keys made with
-- those), and revoking a key revokes the keys made with it. Keys left live by removals and
-- revocations before that are revoked here: a key whose maker is not an active member, or rejoined
-- after the key was made (the key is of an earlier membership), or whose maker key is revoked, and
-- every key made with one of those. Data only; the schema does not change.
UPDATE org_keys SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
WHERE revoked_at IS NULL AND id IN (
  WITH RECURSIVE orphaned(id) AS (
    SELECT k.id FROM org_keys k
    WHERE (k.created_by LIKE 'own\_%' ESCAPE '\' AND NOT EXISTS (
             SELECT 1 FROM org_members m
             WHERE m.org_id = k.org_id AND m.owner_id = k.created_by AND m.status = 'active'
               AND (m.joined_at IS NULL OR m.joined_at <= k.created_at)))
       OR (k.created_by LIKE 'okey\_%' ESCAPE '\' AND NOT EXISTS (
             SELECT 1 FROM org_keys p
             WHERE p.org_id = k.org_id AND p.id = k.created_by AND p.revoked_at IS NULL))
    UNION
    SELECT k.id FROM org_keys k JOIN orphaned ON k.created_by = orphaned.id
  )
  SELECT id FROM orphaned
);
