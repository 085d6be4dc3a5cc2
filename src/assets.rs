//! The files the gateway serves itself (SDK, chat widget, types, the OpenAPI document, the dev
//! demo page), each with a content-hash version for its ETag and cache-busting URL.

use sha2::{Digest, Sha256};

use crate::encoding::hex;

pub struct Asset {
    pub body: &'static str,
    pub content_type: &'static str,
    /// Served only by a dev gateway (`make dev`).
    pub dev_only: bool,
}

pub fn asset(path: &str) -> Option<Asset> {
    let (body, content_type, dev_only) = match path {
        "/chat.js" => (
            include_str!("../web/chat.js"),
            "text/javascript; charset=utf-8",
            false,
        ),
        "/sdk.js" => (
            include_str!("../packages/sdk/index.js"),
            "text/javascript; charset=utf-8",
            false,
        ),
        "/sdk.d.ts" => (
            include_str!("../packages/sdk/index.d.ts"),
            "application/typescript; charset=utf-8",
            false,
        ),
        "/openapi.json" => (
            include_str!("../web/openapi.json"),
            "application/json; charset=utf-8",
            false,
        ),
        "/console" | "/console/" | "/console/index.html" => (
            include_str!("../web/console/index.html"),
            "text/html; charset=utf-8",
            false,
        ),
        "/console/console.js" => (
            include_str!("../web/console/console.js"),
            "text/javascript; charset=utf-8",
            false,
        ),
        "/console/console.css" => (
            include_str!("../web/console/console.css"),
            "text/css; charset=utf-8",
            false,
        ),
        "/" | "/index.html" => (
            include_str!("../web/demo.html"),
            "text/html; charset=utf-8",
            true,
        ),
        _ => return None,
    };
    Some(Asset {
        body,
        content_type,
        dev_only,
    })
}

impl Asset {
    /// A short hash of the content: the ETag, and the `?v=` that makes a URL cacheable forever.
    pub fn version(&self) -> String {
        hex(&Sha256::digest(self.body.as_bytes())[..8])
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version())
    }

    /// `?v=<version>` of this exact content may be cached for a year; other URLs revalidate daily.
    pub fn cache_control(&self, requested_version: Option<&str>) -> &'static str {
        match requested_version {
            Some(v) if v == self.version() => "public, max-age=31536000, immutable",
            _ if self.dev_only => "no-cache",
            _ => "public, max-age=86400",
        }
    }

    /// Whether an `If-None-Match` header already names this content.
    pub fn not_modified(&self, if_none_match: Option<&str>) -> bool {
        let etag = self.etag();
        if_none_match.is_some_and(|h| {
            h.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_known_files_with_stable_versions() {
        let chat = asset("/chat.js").unwrap();
        assert!(chat.content_type.starts_with("text/javascript"));
        assert!(!chat.body.is_empty());
        assert_eq!(chat.version().len(), 16);
        assert_eq!(chat.version(), asset("/chat.js").unwrap().version());
        assert_ne!(chat.version(), asset("/sdk.js").unwrap().version());
        assert!(asset("/").unwrap().dev_only);
        assert!(asset("/nope.js").is_none());
    }

    #[test]
    fn caching_rules() {
        let sdk = asset("/sdk.js").unwrap();
        assert_eq!(
            sdk.cache_control(Some(&sdk.version())),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(sdk.cache_control(Some("old")), "public, max-age=86400");
        assert!(sdk.not_modified(Some(&sdk.etag())));
        assert!(sdk.not_modified(Some(&format!("W/{}, \"x\"", sdk.etag()))));
        assert!(!sdk.not_modified(Some("\"x\"")));
        assert!(!sdk.not_modified(None));
    }
}
