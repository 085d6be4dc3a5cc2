//! Who may change an org's members: admins manage admins, developers and viewers; only owners grant,
//! change or remove the owner role; an org always keeps at least one owner.

use crate::org::Role;

/// Why a member change is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Only an owner may do this (it grants, changes or removes the owner role).
    NeedsOwner,
    /// It would leave the org without an active owner.
    LastOwner,
    /// A caller may not grant a role above its own.
    AboveOwnRole,
}

/// A change to one member: `from` its current role (`None` for an invitation) `to` a role (`None`
/// for a removal), by a caller with role `actor`, when the org has `active_owners` active owners and
/// the member `is_active_owner`.
pub fn check_change(
    actor: Role,
    from: Option<Role>,
    to: Option<Role>,
    is_active_owner: bool,
    active_owners: usize,
) -> Result<(), Refused> {
    let touches_owner = from == Some(Role::Owner) || to == Some(Role::Owner);
    if touches_owner && actor < Role::Owner {
        return Err(Refused::NeedsOwner);
    }
    if to.is_some_and(|r| r > actor) {
        return Err(Refused::AboveOwnRole);
    }
    let loses_owner = is_active_owner && to != Some(Role::Owner);
    if loses_owner && active_owners <= 1 {
        return Err(Refused::LastOwner);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::*;

    type Case = (
        Role,
        Option<Role>,
        Option<Role>,
        bool,
        usize,
        Result<(), Refused>,
    );

    #[test]
    fn member_changes_as_a_table() {
        // (actor, from, to, is_active_owner, active_owners, expected)
        let cases: &[Case] = &[
            (Admin, None, Some(Developer), false, 1, Ok(())),
            (Admin, None, Some(Admin), false, 1, Ok(())),
            (Admin, None, Some(Owner), false, 1, Err(Refused::NeedsOwner)),
            (
                Admin,
                Some(Owner),
                Some(Viewer),
                true,
                2,
                Err(Refused::NeedsOwner),
            ),
            (Admin, Some(Owner), None, true, 2, Err(Refused::NeedsOwner)),
            (Admin, Some(Viewer), Some(Admin), false, 1, Ok(())),
            (Admin, Some(Viewer), None, false, 1, Ok(())),
            (Owner, None, Some(Owner), false, 1, Ok(())),
            (
                Owner,
                Some(Owner),
                Some(Admin),
                true,
                1,
                Err(Refused::LastOwner),
            ),
            (Owner, Some(Owner), None, true, 1, Err(Refused::LastOwner)),
            (Owner, Some(Owner), Some(Admin), true, 2, Ok(())),
            (Owner, Some(Owner), None, false, 1, Ok(())), // an invited owner never counted
            (Owner, Some(Owner), Some(Owner), true, 1, Ok(())),
            (Developer, None, Some(Viewer), false, 1, Ok(())), // the route's role refuses it first
            (
                Developer,
                None,
                Some(Admin),
                false,
                1,
                Err(Refused::AboveOwnRole),
            ),
        ];
        for &(actor, from, to, active, owners, expected) in cases {
            assert_eq!(
                check_change(actor, from, to, active, owners),
                expected,
                "{actor:?} {from:?} → {to:?} (active owner {active}, {owners} owners)"
            );
        }
    }
}
