//! The lifecycle table of model versions.
//!
//! ```text
//! DEVELOPMENT → TESTING → STAGING → PRODUCTION → ARCHIVED
//!      ↑_________↓  ↑_______↓          |
//! any of DEVELOPMENT/TESTING/STAGING/PRODUCTION → DEPRECATED → ARCHIVED
//! ```
//! ARCHIVED is terminal; a move to the same status is not a transition.

use super::types::ModelStatus::{self, *};

/// Whether a version may move from `from` to `to`.
pub fn is_allowed(from: ModelStatus, to: ModelStatus) -> bool {
    matches!(
        (from, to),
        (Development, Testing)
            | (Testing, Staging)
            | (Staging, Production)
            | (Testing, Development)
            | (Staging, Testing)
            | (Development | Testing | Staging | Production, Deprecated)
            | (Production | Deprecated, Archived)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ModelStatus; 6] = [
        Development,
        Testing,
        Staging,
        Production,
        Deprecated,
        Archived,
    ];

    #[test]
    fn exactly_the_documented_transitions_are_allowed() {
        let allowed: Vec<(ModelStatus, ModelStatus)> = ALL
            .iter()
            .flat_map(|&from| ALL.iter().map(move |&to| (from, to)))
            .filter(|&(from, to)| is_allowed(from, to))
            .collect();
        assert_eq!(
            allowed,
            vec![
                (Development, Testing),
                (Development, Deprecated),
                (Testing, Development),
                (Testing, Staging),
                (Testing, Deprecated),
                (Staging, Testing),
                (Staging, Production),
                (Staging, Deprecated),
                (Production, Deprecated),
                (Production, Archived),
                (Deprecated, Archived),
            ]
        );
    }
}
