//! Roles and the RPCs each allows. Every arbiter RPC belongs to exactly one row; `admin` allows
//! everything. PromoteModel and DeleteModel are split further by what they touch (moves to or
//! out of PRODUCTION need `approver`; forced deletes need `admin`), which only the handler can
//! see: the transport layer checks the row, the handler the rest ([`Role::for_promotion`],
//! [`Role::for_deletion`]).

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Allocate, AllocateStream.
    Allocator,
    /// RecordResult, IngestResults.
    Streamer,
    /// Every read.
    Analyst,
    /// CreateTest, PauseTest, ResumeTest, StopTest.
    Experimenter,
    /// RegisterModel, PromoteModel up to STAGING, DeleteModel of versions not in PRODUCTION.
    Publisher,
    /// PromoteModel to and out of PRODUCTION.
    Approver,
    /// Everything, including forced deletes.
    Admin,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 7] = [
        Role::Allocator,
        Role::Streamer,
        Role::Analyst,
        Role::Experimenter,
        Role::Publisher,
        Role::Approver,
        Role::Admin,
    ];

    /// The lowercase name used in the auth file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Allocator => "allocator",
            Role::Streamer => "streamer",
            Role::Analyst => "analyst",
            Role::Experimenter => "experimenter",
            Role::Publisher => "publisher",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }

    /// The roles that may call a method of an arbiter service (`/arbiter.v1.Registry/GetModel`),
    /// or `None` for a path that is not one (health and reflection are open; other paths are
    /// answered UNIMPLEMENTED by the router). One role per method, except PromoteModel, which
    /// `publisher` and `approver` share (the handler then checks what the move touches).
    pub fn for_method(path: &str) -> Option<&'static [Role]> {
        if path == "/arbiter.v1.Registry/PromoteModel" {
            return Some(&[Role::Publisher, Role::Approver]);
        }
        Self::row(path).map(std::slice::from_ref)
    }

    fn row(path: &str) -> Option<&'static Role> {
        let method = path.strip_prefix("/arbiter.v1.")?;
        Some(match method {
            "Allocator/Allocate" | "Allocator/AllocateStream" | "Allocator/WatchAllocations" => {
                &Role::Allocator
            }
            "Allocator/RecordResult" | "Allocator/IngestResults" => &Role::Streamer,
            "Registry/GetModel"
            | "Registry/GetModelMetadata"
            | "Registry/ListModels"
            | "Registry/VerifyModel"
            | "Registry/GetModelPerformance"
            | "Experiments/GetTest"
            | "Experiments/ListTests"
            | "Experiments/GetTestResults"
            | "Experiments/GetTestHistory"
            | "Experiments/EstimateSampleSize"
            | "Admin/ListAuditEvents"
            | "Admin/VerifyAuditChain" => &Role::Analyst,
            "Experiments/CreateTest"
            | "Experiments/PauseTest"
            | "Experiments/ResumeTest"
            | "Experiments/StopTest" => &Role::Experimenter,
            // Narrowed by the handler for forced deletes: see `for_deletion`.
            "Registry/RegisterModel" | "Registry/DeleteModel" => &Role::Publisher,
            _ => return None,
        })
    }

    /// Which kind of call a method is (its row's kind), or `None` for a path that is not an
    /// arbiter method.
    pub fn kind_of(path: &str) -> Option<CallKind> {
        Self::for_method(path).map(|roles| match roles[0] {
            Role::Allocator => CallKind::Allocate,
            Role::Streamer => CallKind::Ingest,
            Role::Analyst => CallKind::Read,
            _ => CallKind::Change,
        })
    }

    /// The role a promotion needs: `approver` for a move to or out of PRODUCTION, else
    /// `publisher`.
    pub fn for_promotion(touches_production: bool) -> Role {
        if touches_production {
            Role::Approver
        } else {
            Role::Publisher
        }
    }

    /// The role a deletion needs: `admin` when forced (the only way to delete PRODUCTION), else
    /// `publisher`.
    pub fn for_deletion(force: bool) -> Role {
        if force {
            Role::Admin
        } else {
            Role::Publisher
        }
    }
}

/// The kinds of call that limits and deadlines treat alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// The allocation hot path (the `allocator` row).
    Allocate,
    /// Result ingestion (the `streamer` row).
    Ingest,
    /// Reads (the `analyst` row).
    Read,
    /// Changes to the registry and to tests (every other row).
    Change,
}

impl CallKind {
    /// Every kind, in order.
    pub const ALL: [CallKind; 4] = [
        CallKind::Allocate,
        CallKind::Ingest,
        CallKind::Read,
        CallKind::Change,
    ];

    /// The lowercase name used in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            CallKind::Allocate => "allocate",
            CallKind::Ingest => "ingest",
            CallKind::Read => "read",
            CallKind::Change => "change",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown role {:?}; roles are {}",
                    s,
                    Role::ALL.map(Role::name).join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_method_has_exactly_one_row() {
        let served = crate::metrics::method_paths(&[crate::pb::FILE_DESCRIPTOR_SET])
            .expect("descriptor set");
        for path in &served {
            assert!(Role::for_method(path).is_some(), "{path} has no role");
        }
        assert_eq!(Role::for_method("/grpc.health.v1.Health/Check"), None);
        assert_eq!(Role::for_method("/arbiter.v1.Allocator/Nope"), None);
        assert_eq!(
            Role::for_method("/arbiter.v1.Admin/VerifyAuditChain"),
            Some(&[Role::Analyst][..])
        );
        assert_eq!(
            Role::kind_of("/arbiter.v1.Registry/PromoteModel"),
            Some(CallKind::Change)
        );
        assert_eq!(
            Role::kind_of("/arbiter.v1.Allocator/IngestResults"),
            Some(CallKind::Ingest)
        );
        assert_eq!("approver".parse::<Role>(), Ok(Role::Approver));
        assert!("root".parse::<Role>().is_err());
    }
}
