//! The admin API's one authorization rule: a caller sees an org's resources only as a member (else
//! they do not exist for it: 404), and acts on them only with at least the route's role (else 403).

use crate::org::Role;

/// Where a route's org comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// An org named by slug in the path.
    Org(String),
    /// A project named by slug in the path: its org.
    Project(String),
    /// An API named by id in the path: its project's org.
    Api(String),
    /// The body's `org` (creating a project).
    BodyOrg,
    /// The body's `project` (creating an API).
    BodyProject,
    /// No one org: listings show the caller's orgs only; creating an org makes the caller its owner.
    Caller,
}

/// Why a caller may not act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Not a member of the resource's org: answered exactly as a resource that does not exist.
    Hidden,
    /// A member whose role is below the route's.
    Forbidden { need: Role, have: Role },
}

/// The decision for a caller whose role in the resource's org is `role` (`None`: not a member) on a
/// route that needs `need`.
pub fn decide(role: Option<Role>, need: Role) -> Result<Role, Denied> {
    match role {
        None => Err(Denied::Hidden),
        Some(have) if have < need => Err(Denied::Forbidden { need, have }),
        Some(have) => Ok(have),
    }
}

/// Who made an org key, as `created_by` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maker {
    /// The instance operator (ADMIN_TOKEN): no cap.
    Operator,
    /// An owner account: the key acts with at most their current role in the org.
    Owner(String),
    /// Another org key: at most that key's (itself capped by its own maker).
    Key(String),
}

impl Maker {
    pub fn of(created_by: &str) -> Option<Maker> {
        match created_by {
            "operator" => Some(Maker::Operator),
            s if s.starts_with("own_") => Some(Maker::Owner(s.to_string())),
            s if s.starts_with("okey_") => Some(Maker::Key(s.to_string())),
            _ => None,
        }
    }
}

/// How many makers are followed from a key to the owner or operator who began its chain before the
/// key is refused: a key an owner made is 1 link from them, a key made with it 2, and so on.
pub const MAX_KEY_CHAIN: usize = 5;

/// Whether a key `links` makers from its chain's start may make a key (one link further): a key that
/// could not be traced is never made.
pub fn key_may_make_a_key(links: usize) -> bool {
    links < MAX_KEY_CHAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makers_are_read_from_created_by() {
        assert_eq!(Maker::of("operator"), Some(Maker::Operator));
        assert_eq!(Maker::of("own_1"), Some(Maker::Owner("own_1".into())));
        assert_eq!(Maker::of("okey_2"), Some(Maker::Key("okey_2".into())));
        assert_eq!(Maker::of("someone"), None);
    }

    #[test]
    fn a_key_makes_keys_only_while_the_chain_can_be_traced() {
        assert!(key_may_make_a_key(1));
        assert!(key_may_make_a_key(MAX_KEY_CHAIN - 1));
        assert!(!key_may_make_a_key(MAX_KEY_CHAIN));
    }

    #[test]
    fn members_below_the_route_role_are_forbidden_and_strangers_see_nothing() {
        for need in Role::ALL {
            assert_eq!(decide(None, need), Err(Denied::Hidden));
            for have in Role::ALL {
                let got = decide(Some(have), need);
                if have >= need {
                    assert_eq!(got, Ok(have));
                } else {
                    assert_eq!(got, Err(Denied::Forbidden { need, have }));
                }
            }
        }
    }
}
