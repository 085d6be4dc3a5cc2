//! The audit log's page cursor: the time and id of a page's last event, so events that share the
//! boundary millisecond are neither skipped nor shown twice.

/// The next page is every event strictly before this one in the log's order (newest first, then by
/// id, descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    pub created_at: i64,
    /// Empty for a plain time: every id sorts above it, so the page starts before that millisecond.
    pub id: String,
}

impl AuditCursor {
    /// `before` as sent: a cursor (`<epoch ms>_<event id>`, what `next_before` says), or a plain time
    /// (epoch milliseconds or RFC 3339), as `before` took before it was a cursor.
    pub fn parse(before: &str) -> Option<AuditCursor> {
        if let Some((ms, id)) = before.split_once('_') {
            let id_ok =
                !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            return id_ok
                .then_some(())
                .and(ms.parse().ok())
                .map(|created_at| AuditCursor {
                    created_at,
                    id: id.to_string(),
                });
        }
        let created_at = before
            .parse()
            .ok()
            .or_else(|| crate::time::parse_rfc3339(before))?;
        Some(AuditCursor {
            created_at,
            id: String::new(),
        })
    }

    /// What `next_before` says.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.created_at, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(created_at: i64, id: &str) -> AuditCursor {
        AuditCursor {
            created_at,
            id: id.into(),
        }
    }

    #[test]
    fn a_cursor_names_the_time_and_the_event() {
        let c = cursor(1_767_225_600_123, "aud_3kT9abcXYZ0123456789");
        assert_eq!(c.encode(), "1767225600123_aud_3kT9abcXYZ0123456789");
        assert_eq!(AuditCursor::parse(&c.encode()), Some(c));
    }

    #[test]
    fn a_plain_time_pages_before_its_millisecond() {
        assert_eq!(
            AuditCursor::parse("1767225600123"),
            Some(cursor(1_767_225_600_123, ""))
        );
        assert_eq!(
            AuditCursor::parse("2026-01-01T00:00:00.123Z"),
            Some(cursor(1_767_225_600_123, ""))
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for junk in [
            "",
            "_",
            "12_",
            "x_aud_1",
            "12_aud 1",
            "12_aud;1",
            "12.5",
            "yesterday",
        ] {
            assert_eq!(AuditCursor::parse(junk), None, "{junk}");
        }
    }
}
