//! Owner accounts and orgs, the pure part: roles, who may do what on the admin API, org keys, org
//! slugs and the rules for changing an org's members.

pub mod access;
pub mod audit;
pub mod key;
pub mod members;
pub mod role;

pub use access::{decide, Denied, Scope};
pub use key::OrgKey;
pub use role::Role;

/// The org every project made before orgs existed belongs to (the migration creates it), and the one
/// the instance operator's projects go to when they name none.
pub const DEFAULT_ORG_ID: &str = "org_default";
pub const DEFAULT_ORG_SLUG: &str = "default";

/// Slugs an org may not take: they are words of the admin API's paths.
const RESERVED_SLUGS: [&str; 4] = ["me", "new", "default", "admin"];

pub fn slug_is_reserved(slug: &str) -> bool {
    RESERVED_SLUGS.contains(&slug)
}

/// The personal org's slug for an email: `you@example.com` → `you-example-com` (a-z, 0-9 and single
/// dashes, at most 48 characters); `attempt` > 0 appends `-2`, `-3`… for a slug already taken.
pub fn personal_slug(email: &str, attempt: u32) -> String {
    let mut slug = String::new();
    for c in email.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let mut slug: String = slug.trim_matches('-').chars().take(48).collect();
    slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() || slug_is_reserved(&slug) {
        slug = format!("org-{slug}").trim_end_matches('-').to_string();
    }
    if attempt > 0 {
        slug = format!("{slug}-{}", attempt + 1);
    }
    slug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_slugs_follow_the_email() {
        assert_eq!(personal_slug("you@example.com", 0), "you-example-com");
        assert_eq!(
            personal_slug("You.Name+ai@Example.co.uk", 0),
            "you-name-ai-example-co-uk"
        );
        assert_eq!(personal_slug("you@example.com", 1), "you-example-com-2");
        assert_eq!(personal_slug("__@__", 0), "org");
        assert_eq!(personal_slug("me@x", 0), "me-x");
        let long = format!("{}@example.com", "a".repeat(80));
        assert!(personal_slug(&long, 0).len() <= 48);
        for s in [personal_slug("é@ü.de", 0), personal_slug("-a-@-b-.c", 3)] {
            crate::input::validate::validate_slug("slug", &s).unwrap();
        }
    }
}
