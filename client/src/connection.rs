//! What the watcher and the reporter share about talking to arbiters: channels with keepalive,
//! calls that carry the bearer token, and the backoff between reconnections.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Lazily connected channels to `endpoints`, pinging every 5 s so a dead peer is noticed.
pub(crate) fn channels(endpoints: Vec<Endpoint>) -> Vec<Channel> {
    endpoints
        .into_iter()
        .map(|e| {
            e.http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
                .connect_lazy()
        })
        .collect()
}

/// A call with `message`, authenticated as `authorization: Bearer <token>` when there is one.
pub(crate) fn request<T>(message: T, token: Option<&str>) -> Result<tonic::Request<T>, String> {
    let mut call = tonic::Request::new(message);
    if let Some(token) = token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|e| format!("the token cannot be sent in a header: {e}"))?;
        call.metadata_mut().insert("authorization", value);
    }
    Ok(call)
}

/// Exponential backoff with jitter between reconnections: from `min`, doubling up to `max`,
/// each wait drawn from its second half (a fleet of routers must not reconnect in step).
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    /// The next attempt starts from the shortest wait.
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }

    /// Waits before the next attempt.
    pub(crate) async fn wait(&mut self, min: Duration, max: Duration) {
        let wait = self.last.map_or(min, |b| (b * 2).min(max));
        self.last = Some(wait);
        tokio::time::sleep(wait / 2 + wait.mul_f64(0.5 * crate::draw::uniform())).await;
    }
}
