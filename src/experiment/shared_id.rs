//! The model version an arm serves, as one shared copy per model version.
//!
//! 10k tests over the same eight model versions would otherwise hold 80k parsed registry ids
//! (64 bytes each plus a heap string) and another 80k strings ready for `Allocate` answers; with
//! sharing they hold 80k pointers. The interning table keeps weak references, so ids that no test
//! holds any more (a creation that failed, a deleted test's config) are dropped.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::registry::types::RegistryId;

/// A registry id shared by every arm that serves that model version.
#[derive(Clone)]
pub struct SharedRegistryId(Arc<Entry>);

struct Entry {
    id: RegistryId,
    /// `id` as text, ready to hand out without formatting.
    text: Box<str>,
}

/// Every shared id alive (by text), with the set's size at which dead entries are next purged.
#[derive(Default)]
struct Interned {
    by_text: HashMap<Box<str>, Weak<Entry>>,
    purge_at: usize,
}

static INTERNED: OnceLock<Mutex<Interned>> = OnceLock::new();

impl SharedRegistryId {
    /// The shared copy of `id`.
    pub fn new(id: RegistryId) -> Self {
        let text = id.to_string();
        let mut interned = INTERNED.get_or_init(Default::default).lock();
        if let Some(shared) = interned.by_text.get(text.as_str()).and_then(Weak::upgrade) {
            return Self(shared);
        }
        // Ids parsed from requests that then fail (unknown model) die at once; purging once the
        // set has doubled since the last purge keeps it within twice the live ids, amortised O(1).
        if interned.by_text.len() >= interned.purge_at {
            interned.by_text.retain(|_, entry| entry.strong_count() > 0);
            interned.purge_at = (2 * interned.by_text.len()).max(64);
        }
        let shared = Arc::new(Entry {
            id,
            text: text.clone().into_boxed_str(),
        });
        interned
            .by_text
            .insert(text.into_boxed_str(), Arc::downgrade(&shared));
        Self(shared)
    }

    /// The parsed id.
    pub fn id(&self) -> &RegistryId {
        &self.0.id
    }

    /// `<model_id>:<version>`.
    pub fn as_str(&self) -> &str {
        &self.0.text
    }
}

// The text is the canonical form of the id.
impl PartialEq for SharedRegistryId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedRegistryId {}

impl fmt::Debug for SharedRegistryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for SharedRegistryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SharedRegistryId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SharedRegistryId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RegistryId::deserialize(d).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> RegistryId {
        RegistryId::parse("registry_id", text).expect("valid")
    }

    #[test]
    fn equal_ids_share_one_copy_and_read_back_as_text() {
        let a = SharedRegistryId::new(id("shared_id_test:1.2.3"));
        let b = SharedRegistryId::new(id("shared_id_test:1.2.3"));
        let c = SharedRegistryId::new(id("shared_id_test:1.2.4"));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert!(!Arc::ptr_eq(&a.0, &c.0));
        assert_ne!(a, c);
        assert_eq!(a.as_str(), "shared_id_test:1.2.3");
        assert_eq!(a.id(), &id("shared_id_test:1.2.3"));

        let json = serde_json::to_string(&a).expect("encode");
        assert_eq!(json, "\"shared_id_test:1.2.3\"");
        let back: SharedRegistryId = serde_json::from_str(&json).expect("decode");
        assert!(Arc::ptr_eq(&back.0, &a.0));
        let err = serde_json::from_str::<SharedRegistryId>("\"no-version\"").expect_err("invalid");
        assert!(err.to_string().contains("no-version"), "{err}");
    }

    #[test]
    fn ids_nobody_holds_are_dropped() {
        let kept = SharedRegistryId::new(id("shared_id_kept:1.0.0"));
        let weak = Arc::downgrade(&kept.0);
        // Many ids that die at once (requests naming unknown models) force purges.
        for i in 0..1000 {
            drop(SharedRegistryId::new(id(&format!(
                "shared_id_gone:{i}.0.0"
            ))));
        }
        let again = SharedRegistryId::new(id("shared_id_kept:1.0.0"));
        assert!(Arc::ptr_eq(&kept.0, &again.0));
        drop((kept, again));
        assert!(
            weak.upgrade().is_none(),
            "the interning table holds no strong reference"
        );
        let len = INTERNED.get().expect("used").lock().by_text.len();
        assert!(len < 1000, "dead ids were purged: {len} entries left");
    }
}
