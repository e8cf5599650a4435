//! The key with which arbiters of one cluster vouch for the callers of the calls they forward.
//!
//! A standby forwards changes and results to the writer after authenticating their caller
//! itself, and names that principal to the writer. The writer believes the name only from a
//! call that carries this key. The key is random, made once per cluster, and kept in a
//! key-value bucket beside the log: whoever may read it there may also write the log itself.
//! Whoever learns it otherwise may act as any principal, so it travels with forwarded calls
//! only over TLS or to a loopback address.

use async_nats::jetstream::kv::{self, CreateErrorKind};
use async_nats::jetstream::stream::StorageType;
use bytes::Bytes;

use super::ClusterOptions;
use crate::storage::StorageError;

/// The key's key in the bucket.
const KEY: &str = "forwarding";

/// The cluster's forwarding key (64 hexadecimal digits), made on first use.
pub async fn shared_key(options: &ClusterOptions) -> Result<String, StorageError> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        StorageError::Replicated(format!("{what} the cluster's forwarding key: {e}"))
    };
    let context = async_nats::jetstream::new(options.connect().await?);
    let bucket = options.trust_bucket();
    let store = match context.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => context
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                history: 1,
                storage: StorageType::File,
                num_replicas: options.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| failed("creating the bucket of", &e))?,
    };
    let made = hex::encode(rand::random::<[u8; 32]>());
    match store.create(KEY, Bytes::from(made.clone())).await {
        Ok(_) => return Ok(made),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed("storing", &e)),
    }
    let stored = store
        .get(KEY)
        .await
        .map_err(|e| failed("reading", &e))?
        .ok_or_else(|| failed("reading", &"it was deleted"))?;
    let key = String::from_utf8(stored.to_vec()).map_err(|e| failed("reading", &e))?;
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(failed("reading", &"it is not 64 hexadecimal digits"));
    }
    Ok(key)
}
