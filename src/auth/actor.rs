//! The actor of a change: who the audit log records and the four-eyes rule compares.
//!
//! With authentication on, the actor is the authenticated principal; a request may repeat its
//! name in `created_by` / `approved_by` / `requested_by` or leave the field empty, and any other
//! name is refused. Without authentication the field is taken as written, but only after
//! checking it holds no control or invisible characters (so `bob\r\nactor=system` and
//! `alice\u{200b}` are refused), and an empty field is [`ANONYMOUS`], never someone else. The
//! four-eyes rule compares names after trimming and case folding ([`same_person`]), so `Alice`
//! cannot approve `alice`'s model.

use super::Identity;

/// The actor of a change nobody put a name to.
pub const ANONYMOUS: &str = "anonymous";
/// Longest free-text actor name.
pub const MAX_ACTOR_LEN: usize = 256;

/// Why an actor field cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorError {
    /// The field names someone other than the authenticated principal.
    #[error("{field} {} is not the authenticated principal {principal:?}", crate::text::shown(.claimed))]
    NotThePrincipal {
        /// The request field.
        field: &'static str,
        /// What it said.
        claimed: String,
        /// Who is authenticated.
        principal: String,
    },
    /// The field is not a usable name.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A validated actor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

impl Actor {
    /// The actor of a request by `identity` whose `field` says `claimed`.
    pub fn resolve(
        identity: &Identity,
        field: &'static str,
        claimed: &str,
    ) -> Result<Self, ActorError> {
        match identity {
            Identity::Principal(p) => {
                if claimed.is_empty() || claimed == p.name {
                    Ok(Self(p.name.clone()))
                } else {
                    Err(ActorError::NotThePrincipal {
                        field,
                        claimed: claimed.to_string(),
                        principal: p.name.clone(),
                    })
                }
            }
            Identity::Open => {
                check_text(field, claimed)?;
                Ok(Self(if claimed.is_empty() {
                    ANONYMOUS.to_string()
                } else {
                    claimed.to_string()
                }))
            }
        }
    }

    /// Whether the actor is [`ANONYMOUS`] (nobody put a name to the change).
    pub fn is_anonymous(&self) -> bool {
        self.0 == ANONYMOUS
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Refuses names that cannot be told apart from others when printed: control characters,
/// invisible and format characters (zero-width spaces and joiners, direction overrides, soft
/// hyphens, variation selectors, tags), surrounding whitespace, and over-long names.
pub fn check_text(field: &'static str, text: &str) -> Result<(), ActorError> {
    let invalid = |reason: String| ActorError::Invalid { field, reason };
    if text.len() > MAX_ACTOR_LEN {
        return Err(invalid(format!("is longer than {MAX_ACTOR_LEN} bytes")));
    }
    if text.trim() != text {
        return Err(invalid("starts or ends with whitespace".into()));
    }
    if let Some(c) = text.chars().find(|&c| c.is_control() || invisible(c)) {
        return Err(invalid(format!(
            "contains the control or invisible character U+{:04X}",
            c as u32
        )));
    }
    Ok(())
}

/// Unicode format and other characters that print as nothing (general category Cf and the
/// fillers and selectors that render blank).
fn invisible(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F
            | 0x1160
            | 0x17B4
            | 0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF9..=0xFFFB
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// Whether two actor names are the same person for the four-eyes rule: equal after trimming and
/// Unicode case folding.
pub fn same_person(a: &str, b: &str) -> bool {
    a.trim().to_lowercase() == b.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Principal, Role};
    use std::sync::Arc;

    fn alice() -> Identity {
        Identity::Principal(Arc::new(Principal::new(
            "alice".into(),
            [Role::Publisher].into(),
            Default::default(),
        )))
    }

    #[test]
    fn with_authentication_the_actor_is_the_principal() {
        let a = Actor::resolve(&alice(), "created_by", "").expect("empty");
        assert_eq!(a.as_str(), "alice");
        assert_eq!(
            Actor::resolve(&alice(), "created_by", "alice")
                .expect("same")
                .as_str(),
            "alice"
        );
        let err = Actor::resolve(&alice(), "approved_by", "bob").expect_err("someone else");
        assert!(matches!(err, ActorError::NotThePrincipal { .. }), "{err}");
        assert!(err.to_string().contains("approved_by \"bob\""), "{err}");
    }

    #[test]
    fn without_authentication_names_are_checked_and_empty_is_anonymous() {
        let open = Identity::Open;
        assert!(Actor::resolve(&open, "requested_by", "")
            .expect("empty")
            .is_anonymous());
        assert_eq!(
            Actor::resolve(&open, "approved_by", "Lead Quant")
                .expect("ok")
                .as_str(),
            "Lead Quant"
        );
        for bad in [
            "bob\r\nactor=system",
            "alice\u{200b}",
            " alice",
            "alice ",
            "a\u{202e}b",
            "x\u{e0041}",
        ] {
            assert!(
                matches!(
                    Actor::resolve(&open, "approved_by", bad),
                    Err(ActorError::Invalid { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(same_person("Alice", "alice"));
        assert!(same_person("ÉMILE", "émile"));
        assert!(!same_person("alice", "alicia"));
    }
}
