//! The model version an arm serves, as one shared copy per model version.
//!
//! 10k tests over the same eight model versions would otherwise hold 80k parsed registry ids
//! (64 bytes each plus a heap string) and another 80k strings ready for `Allocate` answers; with
//! sharing they hold 80k pointers. The interned set never shrinks: it is bounded by the model
//! versions ever named by a test, which the registry bounds anyway.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

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

impl SharedRegistryId {
    /// The shared copy of `id`.
    pub fn new(id: RegistryId) -> Self {
        static INTERNED: OnceLock<Mutex<HashSet<SharedRegistryId>>> = OnceLock::new();
        let text = id.to_string();
        let mut set = INTERNED.get_or_init(Default::default).lock();
        if let Some(shared) = set.get(text.as_str()) {
            return shared.clone();
        }
        let shared = Self(Arc::new(Entry {
            id,
            text: text.into_boxed_str(),
        }));
        set.insert(shared.clone());
        shared
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

// Equality, hashing and `Borrow<str>` all go through the text, so they agree (the text is the
// canonical form of the id) and the interned set can be queried with a `&str`.
impl PartialEq for SharedRegistryId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for SharedRegistryId {}

impl Hash for SharedRegistryId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for SharedRegistryId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

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
}
