//! Owner and group names from the configuration, looked up in the guest's
//! own user database (`/etc/passwd`, `/etc/group`; a static musl build has
//! no NSS modules, so directory users must be given by number).

use crate::{
    config::{FileAccess, Principal},
    projection::Ownership,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OwnershipError {
    #[error("no user {0:?} in this guest (give a number for users not in /etc/passwd)")]
    NoUser(String),
    #[error("no group {0:?} in this guest (give a number for groups not in /etc/group)")]
    NoGroup(String),
    #[error("looking up {0:?}: {1}")]
    Lookup(String, String),
}

pub fn resolve(access: &FileAccess) -> Result<Ownership, OwnershipError> {
    let uid = match &access.owner {
        None => None,
        Some(Principal::Id(id)) => Some(*id),
        Some(Principal::Name(name)) => Some(
            nix::unistd::User::from_name(name)
                .map_err(|e| OwnershipError::Lookup(name.clone(), e.to_string()))?
                .ok_or_else(|| OwnershipError::NoUser(name.clone()))?
                .uid
                .as_raw(),
        ),
    };
    let gid = match &access.group {
        None => None,
        Some(Principal::Id(id)) => Some(*id),
        Some(Principal::Name(name)) => Some(
            nix::unistd::Group::from_name(name)
                .map_err(|e| OwnershipError::Lookup(name.clone(), e.to_string()))?
                .ok_or_else(|| OwnershipError::NoGroup(name.clone()))?
                .gid
                .as_raw(),
        ),
    };
    Ok(Ownership { uid, gid })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(owner: Option<Principal>, group: Option<Principal>) -> FileAccess {
        FileAccess { mode: 0o640, owner, group }
    }

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(resolve(&access(None, None)), Ok(Ownership::default()));
        assert_eq!(
            resolve(&access(Some(Principal::Name("root".into())), Some(Principal::Id(4242)))),
            Ok(Ownership { uid: Some(0), gid: Some(4242) })
        );
    }

    #[test]
    fn unknown_names_say_so() {
        let e = resolve(&access(None, Some(Principal::Name("no-such-group-imds".into())))).unwrap_err();
        assert_eq!(e, OwnershipError::NoGroup("no-such-group-imds".into()));
        assert!(e.to_string().contains("give a number"));
    }
}
