//! Who is calling: principals from the auth file (`--auth-file`), each with roles and a way to
//! authenticate (the SHA-256 of a bearer token, or the subject CN of a client certificate). The
//! file never holds a token, only its digest, and tokens are compared in constant time on the
//! digest. [`Authenticator`] holds the current table and swaps in a new one on reload (SIGHUP);
//! a file that does not parse keeps the old table.
//!
//! Handlers see the caller as an [`Identity`] request extension: a principal when authentication
//! is on, [`Identity::Open`] when the server runs without an auth file (loopback only, unless the
//! operator insists). Knows nothing of gRPC; `grpc::authn` applies it to requests.

pub mod actor;
pub mod limits;
pub mod roles;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use actor::{Actor, ActorError, ANONYMOUS};
pub use limits::{RateLimiter, RateLimits, RateOverrides};
pub use roles::{CallKind, Role};

/// An authenticated caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Principal {
    /// `[A-Za-z0-9._@-]{1,64}`, compared exactly.
    pub name: String,
    /// What it may do.
    pub roles: BTreeSet<Role>,
    /// Its own rate limits, over the server's.
    pub rate_limits: RateOverrides,
    /// Set when a reload of the auth file dropped or changed this entry: streams opened with it
    /// end at their next message.
    revoked: Revoked,
}

impl Principal {
    /// A principal with `roles`.
    pub fn new(name: String, roles: BTreeSet<Role>, rate_limits: RateOverrides) -> Self {
        Self {
            name,
            roles,
            rate_limits,
            revoked: Revoked::default(),
        }
    }

    /// Whether the principal may act in `role` (`admin` may act in every role).
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    /// Whether a reload of the auth file revoked the credential this principal was found by.
    pub fn is_revoked(&self) -> bool {
        self.revoked.0.load(Ordering::Acquire)
    }

    /// Whether `other` is the same entry: same name, roles and rate limits.
    fn same_entry(&self, other: &Principal) -> bool {
        self.name == other.name
            && self.roles == other.roles
            && self.rate_limits == other.rate_limits
    }
}

/// A flag that takes no part in comparisons.
#[derive(Debug, Default)]
struct Revoked(AtomicBool);

impl PartialEq for Revoked {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Revoked {}

/// Who made a request.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The server runs without authentication: actors are what requests say they are.
    Open,
    /// An authenticated principal.
    Principal(Arc<Principal>),
}

/// Why a request is not authenticated, or an auth file is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, or credentials no principal has.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The auth file cannot be read or is invalid.
    #[error("auth file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong, with its location.
        reason: String,
    },
}

/// One `[[principal]]` of the auth file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    roles: Vec<Role>,
    token_sha256: Option<String>,
    cert_subject_cn: Option<String>,
    #[serde(default)]
    rate_limits: RateOverrides,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    principal: Vec<Entry>,
}

/// A SHA-256 digest as four words, compared in constant time a word at a time (a byte at a time
/// costs ~35 ns per principal, which adds up over an auth file of many principals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest256([u64; 4]);

impl From<[u8; 32]> for Digest256 {
    fn from(bytes: [u8; 32]) -> Self {
        let word =
            |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Self([word(0), word(1), word(2), word(3)])
    }
}

impl Digest256 {
    fn ct_eq(&self, other: &Self) -> subtle::Choice {
        let differences = self
            .0
            .iter()
            .zip(other.0)
            .fold(0u64, |acc, (a, b)| acc | (a ^ b));
        differences.ct_eq(&0)
    }
}

/// The principals of one version of the auth file.
#[derive(Debug, Default)]
pub struct AuthTable {
    by_token: Vec<(Digest256, Arc<Principal>)>,
    by_cn: HashMap<String, Arc<Principal>>,
    by_name: HashMap<String, Arc<Principal>>,
}

/// Actors the server itself records: automatic changes are audited as `system`, promotions
/// without an actor on a server without authentication as `anonymous`.
const RESERVED_NAMES: [&str; 2] = ["system", ANONYMOUS];

fn valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    (1..=64).contains(&name.len()) && name.chars().all(ok)
}

impl AuthTable {
    /// Parses the TOML text of an auth file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let mut table = AuthTable::default();
        let mut names = HashSet::new();
        for (i, entry) in file.principal.into_iter().enumerate() {
            let at = |what: String| format!("principal {} ({:?}): {what}", i + 1, entry.name);
            if !valid_name(&entry.name) {
                return Err(at("name must match [A-Za-z0-9._@-]{1,64}".into()));
            }
            if RESERVED_NAMES.contains(&entry.name.as_str()) {
                return Err(at(format!(
                    "the name is reserved for the server's own audit events ({})",
                    RESERVED_NAMES.join(", ")
                )));
            }
            if !names.insert(entry.name.clone()) {
                return Err(at("listed twice".into()));
            }
            if entry.roles.is_empty() {
                return Err(at("has no roles".into()));
            }
            if entry.token_sha256.is_none() && entry.cert_subject_cn.is_none() {
                return Err(at("needs token_sha256 or cert_subject_cn".into()));
            }
            let principal = Arc::new(Principal::new(
                entry.name.clone(),
                entry.roles.iter().copied().collect(),
                entry.rate_limits,
            ));
            if let Some(hex_digest) = &entry.token_sha256 {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| {
                    at(
                        "token_sha256 must be 64 hexadecimal digits (the SHA-256 of the token)"
                            .into(),
                    )
                })?;
                if digest == <[u8; 32]>::from(Sha256::digest(b"")) {
                    return Err(at(
                        "token_sha256 is the SHA-256 of an empty token (was the token variable unset?)"
                            .into(),
                    ));
                }
                let digest = Digest256::from(digest);
                if table.by_token.iter().any(|(d, _)| *d == digest) {
                    return Err(at("shares its token with another principal".into()));
                }
                table.by_token.push((digest, principal.clone()));
            }
            table.by_name.insert(entry.name.clone(), principal.clone());
            if let Some(cn) = &entry.cert_subject_cn {
                if cn.is_empty() || table.by_cn.insert(cn.clone(), principal).is_some() {
                    return Err(at(format!(
                        "cert_subject_cn {cn:?} is empty or listed twice"
                    )));
                }
            }
        }
        Ok(table)
    }

    /// Reads and parses an auth file.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let err = |reason: String| AuthError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Self::parse(&text).map_err(err)
    }

    /// The principal a bearer token or a client certificate's CN belongs to. A token, when
    /// present, decides; it is compared in constant time with every principal's digest.
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        cert_cn: Option<&str>,
    ) -> Result<Arc<Principal>, AuthError> {
        if let Some(token) = bearer {
            let digest = Digest256::from(<[u8; 32]>::from(Sha256::digest(token.as_bytes())));
            let mut found = None;
            // Every digest is compared, in time independent of where they differ.
            for (candidate, principal) in &self.by_token {
                if bool::from(candidate.ct_eq(&digest)) {
                    found = Some(principal.clone());
                }
            }
            return found.ok_or(AuthError::Unauthenticated("the bearer token is not valid"));
        }
        if let Some(cn) = cert_cn {
            return self
                .by_cn
                .get(cn)
                .cloned()
                .ok_or(AuthError::Unauthenticated(
                    "the client certificate names no principal",
                ));
        }
        Err(AuthError::Unauthenticated(
            "no credentials: send `authorization: Bearer <token>` or a client certificate",
        ))
    }

    /// The principal called `name`, for a call another arbiter of the cluster authenticated.
    pub fn named(&self, name: &str) -> Option<Arc<Principal>> {
        self.by_name.get(name).cloned()
    }

    /// Marks revoked every principal whose token or certificate name `new` does not map to the
    /// same entry.
    fn revoke_missing_from(&self, new: &AuthTable) {
        for (digest, principal) in &self.by_token {
            let kept = new
                .by_token
                .iter()
                .any(|(d, p)| d == digest && p.same_entry(principal));
            if !kept {
                principal.revoked.0.store(true, Ordering::Release);
            }
        }
        for (cn, principal) in &self.by_cn {
            if !new.by_cn.get(cn).is_some_and(|p| p.same_entry(principal)) {
                principal.revoked.0.store(true, Ordering::Release);
            }
        }
    }

    /// Takes over from `old` the principal of every entry that did not change (and was not
    /// revoked), in place of this table's copy.
    fn keep_principals_of(&mut self, old: &AuthTable) {
        let kept = |new: &Arc<Principal>, old: Option<&Arc<Principal>>| -> Option<Arc<Principal>> {
            old.filter(|o| o.same_entry(new) && !o.is_revoked())
                .cloned()
        };
        for (digest, principal) in &mut self.by_token {
            let previous = old
                .by_token
                .iter()
                .find(|(d, _)| d == digest)
                .map(|(_, p)| p);
            if let Some(p) = kept(principal, previous) {
                *principal = p;
            }
        }
        for (cn, principal) in &mut self.by_cn {
            if let Some(p) = kept(principal, old.by_cn.get(cn)) {
                *principal = p;
            }
        }
        for (name, principal) in &mut self.by_name {
            if let Some(p) = kept(principal, old.by_name.get(name)) {
                *principal = p;
            }
        }
    }

    /// Number of principals that can authenticate.
    pub fn len(&self) -> usize {
        self.by_token.len() + self.by_cn.len()
    }

    /// Whether no principal can authenticate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The auth file's current table, reloadable.
#[derive(Debug)]
pub struct Authenticator {
    path: PathBuf,
    table: ArcSwap<AuthTable>,
}

impl Authenticator {
    /// Loads `path`.
    pub fn open(path: &Path) -> Result<Self, AuthError> {
        Ok(Self {
            path: path.to_path_buf(),
            table: ArcSwap::from_pointee(AuthTable::load(path)?),
        })
    }

    /// Reads the file again; on error the current table stays and the error is returned.
    /// Principals of the old table whose credential the new one no longer maps to the same
    /// entry are marked revoked, so the streams they opened end.
    pub fn reload(&self) -> Result<usize, AuthError> {
        let mut table = AuthTable::load(&self.path)?;
        let n = table.len();
        let old = self.table.load_full();
        // Revoked before the new table serves: once a new call is refused, every stream opened
        // with the old credential ends at its next message.
        old.revoke_missing_from(&table);
        // Entries that did not change keep their principal, so streams opened with it are
        // still reached by a later reload that revokes it.
        table.keep_principals_of(&old);
        self.table.store(Arc::new(table));
        Ok(n)
    }

    /// Principals authenticated by a client certificate.
    pub fn certificate_principals(&self) -> usize {
        self.table.load().by_cn.len()
    }

    /// See [`AuthTable::named`].
    pub fn named(&self, name: &str) -> Option<Arc<Principal>> {
        self.table.load().named(name)
    }

    /// See [`AuthTable::authenticate`].
    pub fn authenticate(
        &self,
        bearer: Option<&str>,
        cert_cn: Option<&str>,
    ) -> Result<Arc<Principal>, AuthError> {
        self.table.load().authenticate(bearer, cert_cn)
    }
}

/// The hex SHA-256 of a token, as the auth file holds it.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(entries: &str) -> Result<AuthTable, String> {
        AuthTable::parse(entries)
    }

    #[test]
    fn tokens_and_certificates_name_principals() {
        let table = file(&format!(
            r#"
            [[principal]]
            name = "alice"
            roles = ["publisher", "analyst"]
            token_sha256 = "{}"
            [[principal]]
            name = "router-ny4"
            roles = ["allocator", "streamer"]
            cert_subject_cn = "router-ny4"
            "#,
            token_digest("s3cret")
        ))
        .expect("valid");
        let alice = table.authenticate(Some("s3cret"), None).expect("alice");
        assert_eq!(alice.name, "alice");
        assert!(alice.has(Role::Publisher) && !alice.has(Role::Approver));
        let router = table
            .authenticate(None, Some("router-ny4"))
            .expect("router");
        assert!(router.has(Role::Allocator));
        assert!(table.authenticate(Some("wrong"), None).is_err());
        assert!(table.authenticate(None, Some("someone")).is_err());
        assert!(table.authenticate(None, None).is_err());
        // A token decides even beside a certificate.
        assert!(table
            .authenticate(Some("wrong"), Some("router-ny4"))
            .is_err());
    }

    #[test]
    fn bad_files_name_the_problem() {
        let digest = token_digest("t");
        for (text, needle) in [
            (
                "[[principal]]\nname = \"a b\"\nroles = [\"admin\"]\ntoken_sha256 = \"00\"",
                "name",
            ),
            (
                "[[principal]]\nname = \"a\"\nroles = [\"root\"]",
                "unknown variant",
            ),
            (
                "[[principal]]\nname = \"a\"\nroles = []\ntoken_sha256 = \"00\"",
                "no roles",
            ),
            (
                "[[principal]]\nname = \"a\"\nroles = [\"admin\"]",
                "token_sha256 or",
            ),
            (
                "[[principal]]\nname = \"a\"\nroles = [\"admin\"]\ntoken_sha256 = \"xyz\"",
                "64 hexadecimal",
            ),
            (
                "[[principal]]\nname = \"a\"\nroles = [\"admin\"]\ntoken = \"plain\"",
                "unknown field",
            ),
            (
                "[[principal]]\nname = \"system\"\nroles = [\"admin\"]\ncert_subject_cn = \"x\"",
                "reserved",
            ),
            (
                "[[principal]]\nname = \"anonymous\"\nroles = [\"admin\"]\ncert_subject_cn = \"x\"",
                "reserved",
            ),
        ] {
            let err = file(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
        let twice = format!(
            "[[principal]]\nname = \"a\"\nroles = [\"admin\"]\ntoken_sha256 = \"{digest}\"\n\
             [[principal]]\nname = \"b\"\nroles = [\"admin\"]\ntoken_sha256 = \"{digest}\""
        );
        assert!(file(&twice)
            .expect_err("shared")
            .contains("shares its token"));
        let empty = format!(
            "[[principal]]\nname = \"a\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"",
            token_digest("")
        );
        assert!(file(&empty).expect_err("empty").contains("empty token"));
    }

    #[test]
    fn a_reload_revokes_the_principals_it_drops_or_changes() {
        let entry = |name: &str, roles: &str, token: &str| {
            format!(
                "[[principal]]\nname = {name:?}\nroles = [{roles}]\ntoken_sha256 = {:?}\n",
                token_digest(token)
            )
        };
        let old = file(&format!(
            "{}{}{}",
            entry("kept", "\"analyst\"", "k"),
            entry("dropped", "\"analyst\"", "d"),
            entry("narrowed", "\"analyst\", \"publisher\"", "n")
        ))
        .expect("old");
        let new = file(&format!(
            "{}{}",
            entry("kept", "\"analyst\"", "k"),
            entry("narrowed", "\"analyst\"", "n")
        ))
        .expect("new");
        let [kept, dropped, narrowed] =
            ["k", "d", "n"].map(|t| old.authenticate(Some(t), None).expect("old token"));
        old.revoke_missing_from(&new);
        assert!(!kept.is_revoked());
        assert!(dropped.is_revoked());
        assert!(narrowed.is_revoked());

        // Reloads that keep an entry keep its principal: a later reload that drops it revokes
        // what a stream opened before the first reload holds (a CI failure: an unrelated SIGHUP
        // came first).
        let mut new = new;
        new.keep_principals_of(&old);
        let unchanged = file(&entry("kept", "\"analyst\"", "k")).expect("same again");
        new.revoke_missing_from(&unchanged);
        let mut unchanged = unchanged;
        unchanged.keep_principals_of(&new);
        assert!(Arc::ptr_eq(
            &unchanged.authenticate(Some("k"), None).expect("token"),
            &kept
        ));
        let without = file(&entry("other", "\"analyst\"", "o")).expect("without");
        unchanged.revoke_missing_from(&without);
        assert!(
            kept.is_revoked(),
            "the principal of the first table is revoked"
        );
    }
}
