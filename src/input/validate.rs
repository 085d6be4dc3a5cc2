//! Checks shared by every admin body: JSON parsing (syntax before shape), slugs, printable text,
//! upstream URLs and browser origins.

use serde::{de::DeserializeOwned, Deserialize, Deserializer};
use serde_json::Value;

use crate::error::Error;
use crate::records::api::DEMO_UPSTREAM;

/// Parses a JSON request body: syntax errors are `invalid-json`, shape errors `invalid-request`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid_json(
            "The request body is empty; send a JSON object.",
        ));
    }
    // Syntax first, so any malformed document is `invalid-json` whatever its shape.
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| Error::invalid_json(syntax(&e)))?;
    // Every body is an object: serde would read an array's items as the fields in order.
    if !value.is_object() {
        return Err(Error::invalid_request(
            "The request body must be a JSON object.",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Error::invalid_request(format!("The JSON body does not fit: {e}.")))
}

/// What is wrong with a body that is not JSON. serde_json says a lone UTF-16 surrogate (`\ud800`
/// without its pair, which `JSON.stringify` writes for a broken string) is a bad hex escape; the
/// detail names it plainly.
fn syntax(e: &serde_json::Error) -> String {
    let said = e.to_string();
    if said.contains("hex escape") || said.contains("surrogate") {
        return format!(
            "The body is not valid JSON: a string holds a lone UTF-16 surrogate (an escape from \\ud800 \
             to \\udfff without its pair), at line {} column {}. Send well-formed Unicode text.",
            e.line(),
            e.column()
        );
    }
    format!("The body is not valid JSON: {said}.")
}

/// `Some(None)` for an explicit `null`, `None` for an absent field (with `#[serde(default)]`).
pub fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Refuses an explicit `null` (`Some(None)`, parsed with [`nullable`]) for a field that may be left
/// out but has no empty value: `null` would otherwise read as "unchanged" and the request succeed
/// with nothing done.
pub fn refuse_null<T>(param: &str, value: &Option<Option<T>>) -> Result<(), Error> {
    match value {
        Some(None) => Err(Error::invalid_request(format!(
            "`{param}` cannot be null; leave it out to keep its value"
        ))
        .with_field("param", param)),
        _ => Ok(()),
    }
}

/// A field a body must carry, parsed with [`nullable`]: left out or `null`, it is a 400 naming it.
pub fn required<T>(param: &str, value: Option<Option<T>>) -> Result<T, Error> {
    refuse_null(param, &value)?;
    value.flatten().ok_or_else(|| {
        Error::invalid_request(format!("`{param}` is required")).with_field("param", param)
    })
}

pub fn validate_slug(field: &str, s: &str) -> Result<(), Error> {
    let ok = (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_request(format!(
            "`{field}` must be 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`"
        )))
    }
}

/// Bidirectional embeddings, overrides and isolates (U+202A–U+202E, U+2066–U+2069): they reorder
/// how the text around them is shown, so a name could read as another.
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether a character shows nothing: whitespace, Unicode's format characters (category Cf:
/// zero-width spaces and joiners, bidi marks, the BOM, soft hyphens, tags, interlinear annotation
/// and musical or hieroglyph format controls), variation selectors, and the fillers and blanks
/// that render as nothing.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1345F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// A name: 1 to `max` characters, at least one of them visible, no control characters and no
/// bidirectional controls.
pub fn validate_text(field: &str, s: &str, max: usize) -> Result<(), Error> {
    let why = if s.chars().count() > max || s.is_empty() {
        Some(format!("`{field}` must be 1-{max} characters"))
    } else if s.chars().any(char::is_control) {
        Some(format!("`{field}` may not hold control characters"))
    } else if s.chars().any(is_bidi_control) {
        Some(format!(
            "`{field}` may not hold bidirectional controls (U+202A to U+202E, U+2066 to U+2069)"
        ))
    } else if s.chars().all(is_invisible) {
        Some(format!(
            "`{field}` must have at least one visible character"
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::invalid_request(why).with_field("param", field)),
        None => Ok(()),
    }
}

/// A URL's origin: its scheme and authority, lower-cased (`demo` for the demo upstream). A provider
/// key is bound to its base URL's: the key was given for that host and goes to no other.
pub fn upstream_origin(base_url: &str) -> String {
    let lower = base_url.to_ascii_lowercase();
    match lower.split_once("://") {
        Some((scheme, rest)) => {
            // `\` ends the host for http(s) as fetch parses URLs; a base URL with userinfo or
            // percent-escapes in its host is refused when stored, and never matches here.
            let authority = rest.split(['/', '\\', '?', '#']).next().unwrap_or("");
            format!("{scheme}://{authority}")
        }
        None => lower,
    }
}

/// The base URL of an OpenAI-compatible server, or `demo` for the built-in demo upstream.
pub fn validate_base_url(s: &str) -> Result<(), Error> {
    if s == DEMO_UPSTREAM {
        return Ok(());
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '\\', '?', '#']).next().unwrap_or(""));
    // A plain host[:port]: no userinfo (`@`), escapes, backslashes or other characters that URL
    // parsers read differently, so the host the key is bound to is the host fetch calls.
    let plain = |h: &str| {
        h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    };
    match host {
        Some(h) if !h.is_empty() && plain(h) && s.len() <= 2048 && !s.contains(char::is_whitespace) && !s.contains(['?', '#', '\\']) => Ok(()),
        _ => Err(Error::invalid_request(
            "`upstream.base_url` must be an http(s) URL such as https://api.openai.com/v1, or `demo`",
        )),
    }
}

/// An allowed browser origin: `*`, or `scheme://host[:port]` with nothing after it.
pub fn validate_origin(o: &str) -> Result<(), Error> {
    if o == "*" {
        return Ok(());
    }
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) && o.len() <= 300 =>
        {
            Ok(())
        }
        _ => Err(Error::invalid_request(format!(
            "`{o}` is not an origin; use e.g. https://app.example.com or *"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::project::NewProject;

    #[test]
    fn a_name_shows_something_and_cannot_be_reordered() {
        for ok in ["acme", "Ünïcødé ✓", "a\u{200B}b", "שלום", "  x  "] {
            validate_text("name", ok, 200).unwrap();
        }
        for bad in [
            "",
            "   ",
            "\u{200B}",
            "\u{FEFF}\u{200B}\u{2060}",
            "\u{00AD}\u{3164}",
            "\u{061C}",
            "\u{E0041}\u{E0042}",
            "\u{E0100}",
            "\u{2800}",
            "\u{17B4}",
            "\u{1D173}",
            "\u{FFF9}",
            "\u{180B}",
            "safe\u{202E}txt.exe",
            "a\u{2066}b\u{2069}",
            "nul\u{0}",
            "tab\tname",
            "x".repeat(201).as_str(),
        ] {
            let e = validate_text("name", bad, 200).unwrap_err();
            assert_eq!(e.extra["param"], "name", "{bad:?}");
        }
    }

    #[test]
    fn null_is_refused_naming_the_field() {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "nullable")]
            name: Option<Option<String>>,
        }
        let parse = |json: &[u8]| parse_body::<Body>(json).unwrap().name;
        let e = refuse_null("name", &parse(br#"{"name":null}"#)).unwrap_err();
        assert_eq!((e.status, e.kind()), (400, "invalid-request"));
        assert_eq!(e.extra["param"], "name");
        refuse_null("name", &parse(b"{}")).unwrap();
        refuse_null("name", &parse(br#"{"name":"x"}"#)).unwrap();
        for body in [br#"{"name":null}"#.as_slice(), b"{}"] {
            let e = required("name", parse(body)).unwrap_err();
            assert_eq!((e.status, &e.extra["param"]), (400, &Value::from("name")));
        }
        assert_eq!(required("name", parse(br#"{"name":"x"}"#)).unwrap(), "x");
    }

    #[test]
    fn body_errors_are_classified() {
        assert_eq!(
            parse_body::<NewProject>(b"{nope").unwrap_err().kind(),
            "invalid-json"
        );
        assert_eq!(
            parse_body::<NewProject>(b"").unwrap_err().kind(),
            "invalid-json"
        );
        assert_eq!(
            parse_body::<NewProject>(br#"{"slug":"a"}"#)
                .unwrap_err()
                .kind(),
            "invalid-request"
        );
        assert_eq!(
            parse_body::<NewProject>(br#"{"slug":"a","name":"b","x":1}"#)
                .unwrap_err()
                .kind(),
            "invalid-request"
        );
        assert!(parse_body::<NewProject>(br#"{"slug":"a","name":"b"}"#).is_ok());
        for not_an_object in [
            &br#"["a","b"]"#[..],
            b"[]",
            b"[null]",
            b"\"x\"",
            b"7",
            b"null",
        ] {
            let e = parse_body::<NewProject>(not_an_object).unwrap_err();
            assert_eq!(
                e.problem,
                crate::error::Problem::InvalidRequest,
                "{}",
                String::from_utf8_lossy(not_an_object)
            );
        }
    }

    #[test]
    fn a_lone_surrogate_is_named_as_such() {
        for body in [
            br#"{"m":"bad \ud800"}"#.as_slice(),
            br#"{"m":"\udc00 x"}"#,
            br#"{"m":"\ud800\u0041"}"#,
        ] {
            let e = parse_body::<Value>(body).unwrap_err();
            assert_eq!(e.kind(), "invalid-json");
            assert!(e.detail.contains("lone UTF-16 surrogate"), "{}", e.detail);
            assert!(e.detail.contains("line 1 column"), "{}", e.detail);
        }
        // A pair is one character, and other syntax errors keep serde_json's words.
        let v: Value = parse_body(br#"{"m":"\ud83d\ude00"}"#).unwrap();
        assert_eq!(v["m"], "\u{1F600}");
        let e = parse_body::<Value>(br#"{"m":"\x"}"#).unwrap_err();
        assert!(e.detail.contains("invalid escape"), "{}", e.detail);
    }

    #[test]
    fn slugs_and_urls_are_checked() {
        assert!(validate_slug("slug", "demo-1").is_ok());
        for bad in ["", "Demo", "-a", "a-", "a b", "a/b", &"a".repeat(64)] {
            assert!(validate_slug("slug", bad).is_err(), "{bad}");
        }
        assert!(validate_base_url("demo").is_ok());
        for bad in [
            "https://evil.example\\@api.openai.com/v1",
            "https://user:pass@api.openai.com/v1",
            "https://api.openai.com%2eevil.example/v1",
            "https://api.openai.com\\v1",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
        assert!(validate_base_url("http://[::1]:8080/v1").is_ok());
        assert_eq!(
            upstream_origin("https://API.openai.com/v1"),
            upstream_origin("https://api.openai.com/v2/")
        );
        for other in [
            "http://api.openai.com/v1",
            "https://api.openai.com:8443/v1",
            "https://evil.example/v1",
            "https://api.openai.com.evil.example/v1",
            "https://user@evil.example/api.openai.com",
            "https://evil.example\\@api.openai.com/v1",
        ] {
            assert_ne!(
                upstream_origin("https://api.openai.com/v1"),
                upstream_origin(other),
                "{other}"
            );
        }
        assert!(validate_base_url("https://api.openai.com/v1").is_ok());
        assert!(validate_base_url("http://127.0.0.1:9000").is_ok());
        for bad in [
            "ftp://x",
            "https://",
            "https:// x",
            "api.openai.com",
            "http://x/?a=1",
        ] {
            assert!(validate_base_url(bad).is_err(), "{bad}");
        }
    }
}
