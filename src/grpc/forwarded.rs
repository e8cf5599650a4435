//! Calls one arbiter of a cluster forwards to another: a standby sends the changes and results
//! it receives to the writer. The standby authenticates the caller itself, then names the
//! principal in [`FORWARDED_PRINCIPAL`] and proves it may do so with the cluster's key in
//! [`FORWARD_KEY`] (see `cluster::trust`); the writer takes the principal's roles from its own
//! auth file. [`FORWARDED`] marks a forwarded call, so that one is never forwarded twice.

use std::sync::{Arc, OnceLock};

use subtle::ConstantTimeEq;

/// The principal a forwarding arbiter authenticated.
pub const FORWARDED_PRINCIPAL: &str = "x-arbiter-forwarded-principal";
/// The cluster's key, proving the forwarding arbiter is one of the cluster's.
pub const FORWARD_KEY: &str = "x-arbiter-forward-key";
/// Set on every forwarded call.
pub const FORWARDED: &str = "x-arbiter-forwarded";

/// The cluster's forwarding key, once this arbiter has read it (never, outside cluster mode:
/// then no forwarded principal is believed).
#[derive(Debug, Clone, Default)]
pub struct ClusterKey(Arc<OnceLock<String>>);

impl ClusterKey {
    /// Sets the key (the first setting stays).
    pub fn set(&self, key: String) {
        let _ = self.0.set(key);
    }

    /// The key, once known.
    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }

    /// Whether `presented` is the key, compared in time independent of where they differ.
    pub fn verifies(&self, presented: &[u8]) -> bool {
        self.get()
            .is_some_and(|key| bool::from(key.as_bytes().ct_eq(presented)))
    }
}

#[cfg(test)]
mod tests {
    use super::ClusterKey;

    #[test]
    fn only_the_known_key_verifies() {
        let key = ClusterKey::default();
        assert!(!key.verifies(b""), "no key is known yet");
        key.set("ab".repeat(32));
        assert!(key.verifies("ab".repeat(32).as_bytes()));
        assert!(!key.verifies("ab".repeat(31).as_bytes()));
        assert!(!key.verifies("ba".repeat(32).as_bytes()));
        key.set("cd".repeat(32));
        assert!(
            key.verifies("ab".repeat(32).as_bytes()),
            "the first key stays"
        );
    }
}
