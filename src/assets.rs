//! The files the gateway serves itself (SDK, chat widget, types, the OpenAPI document, the owner
//! console, the dev demo page): where each lives in the static assets (`make build` copies them to
//! `target/site/static/`, outside the WASM), its media type, and the content-hash version that is its
//! ETag and cache-busting URL.

use sha2::{Digest, Sha256};

use crate::encoding::hex;

/// A file the gateway serves: its name under `static/` in the assets binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub file: &'static str,
    pub content_type: &'static str,
    /// Served only by a dev gateway (`make dev`).
    pub dev_only: bool,
}

/// Where the build puts the served files inside the static assets directory.
pub const STATIC_DIR: &str = "static";

pub fn asset(path: &str) -> Option<Asset> {
    let js = "text/javascript; charset=utf-8";
    let (file, content_type, dev_only) = match path {
        "/chat.js" => ("chat.js", js, false),
        "/sdk.js" => ("sdk.js", js, false),
        "/sdk.d.ts" => ("sdk.d.ts", "application/typescript; charset=utf-8", false),
        "/openapi.json" => ("openapi.json", "application/json; charset=utf-8", false),
        "/console" | "/console/" | "/console/index.html" => {
            ("console/index.html", "text/html; charset=utf-8", false)
        }
        "/console/console.js" => ("console/console.js", js, false),
        "/console/console.css" => ("console/console.css", "text/css; charset=utf-8", false),
        "/" | "/index.html" => ("demo.html", "text/html; charset=utf-8", true),
        _ => return None,
    };
    Some(Asset {
        file,
        content_type,
        dev_only,
    })
}

/// A served file's content with its version, computed once per isolate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub asset: Asset,
    pub body: Vec<u8>,
    version: String,
}

impl Loaded {
    pub fn new(asset: Asset, body: Vec<u8>) -> Loaded {
        let version = hex(&Sha256::digest(&body)[..8]);
        Loaded {
            asset,
            body,
            version,
        }
    }

    /// A short hash of the content: the ETag, and the `?v=` that makes a URL cacheable forever.
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn etag(&self) -> String {
        format!("\"{}\"", self.version)
    }

    /// `?v=<version>` of this exact content may be cached for a year. Other URLs name whatever is
    /// deployed now, so a fix reaches every page soon: the widget and SDK files within five minutes,
    /// and the console's files (which must match the admin API they call) and the dev page revalidate
    /// on every use (their ETag makes that a 304).
    pub fn cache_control(&self, requested_version: Option<&str>) -> &'static str {
        match requested_version {
            Some(v) if v == self.version => "public, max-age=31536000, immutable",
            _ if self.asset.dev_only || self.asset.file.starts_with("console/") => "no-cache",
            _ => "public, max-age=300",
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

    fn loaded(path: &str, body: &str) -> Loaded {
        Loaded::new(asset(path).unwrap(), body.as_bytes().to_vec())
    }

    #[test]
    fn serves_known_files_with_stable_versions() {
        let chat = asset("/chat.js").unwrap();
        assert!(chat.content_type.starts_with("text/javascript"));
        assert_eq!(chat.file, "chat.js");
        let a = loaded("/chat.js", include_str!("../web/chat.js"));
        assert_eq!(a.version().len(), 16);
        assert_eq!(
            a.version(),
            loaded("/chat.js", include_str!("../web/chat.js")).version()
        );
        assert_ne!(
            a.version(),
            loaded("/sdk.js", include_str!("../packages/sdk/index.js")).version()
        );
        assert!(asset("/").unwrap().dev_only);
        assert!(asset("/nope.js").is_none());
        assert_eq!(
            asset("/console/").unwrap().file,
            asset("/console").unwrap().file
        );
    }

    #[test]
    fn caching_rules() {
        let sdk = loaded("/sdk.js", "export const x = 1;");
        assert_eq!(
            sdk.cache_control(Some(sdk.version())),
            "public, max-age=31536000, immutable"
        );
        assert_eq!(sdk.cache_control(Some("old")), "public, max-age=300");
        assert_eq!(sdk.cache_control(None), "public, max-age=300");
        assert_eq!(
            loaded("/chat.js", "x").cache_control(None),
            "public, max-age=300"
        );
        assert_eq!(loaded("/", "<p>").cache_control(None), "no-cache");
        for console in ["/console", "/console/console.js", "/console/console.css"] {
            let c = loaded(console, "x");
            assert_eq!(c.cache_control(None), "no-cache", "{console}");
            assert_eq!(
                c.cache_control(Some(c.version())),
                "public, max-age=31536000, immutable"
            );
        }
        assert!(sdk.not_modified(Some(&sdk.etag())));
        assert!(sdk.not_modified(Some(&format!("W/{}, \"x\"", sdk.etag()))));
        assert!(!sdk.not_modified(Some("\"x\"")));
        assert!(!sdk.not_modified(None));
    }
}
