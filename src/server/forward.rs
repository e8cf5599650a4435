//! Cluster mode: a standby sends the changes and results it receives to the writer, over the
//! writer's advertised address (the writer lease names it), and relays the answers. The caller
//! sees the writer's answers, acknowledgements included: a result batch acknowledged through a
//! standby is as durable as one sent to the writer.
//!
//! The standby authenticated the caller; the writer is told who it was (see
//! [`crate::grpc::forwarded`]). A forwarded call reaching an arbiter that is not the writer
//! (the lease moved meanwhile) is refused rather than forwarded again.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::watch;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;
use tower::ServiceExt;

use crate::auth::Identity as Caller;
use crate::cluster::SeenWriter;
use crate::grpc::forwarded::{ClusterKey, FORWARDED, FORWARDED_PRINCIPAL, FORWARD_KEY};

use super::ServerError;

/// How long connecting to the writer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The connection to the writer is pinged this often, and dropped when a ping is not answered
/// within [`KEEPALIVE_TIMEOUT`] (its calls then fail UNAVAILABLE).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// See [`KEEPALIVE_INTERVAL`].
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwards calls to the writer; see the module documentation.
pub(super) struct Forwarder {
    /// The arbiter holding the writer lease, as last seen.
    writer: watch::Receiver<Option<SeenWriter>>,
    key: ClusterKey,
    /// How to reach writers over https.
    tls: ClientTlsConfig,
    /// The channel to the writer's address, made on first use and again when it moves.
    channel: parking_lot::Mutex<Option<(String, Channel)>>,
}

/// TLS towards other arbiters: trusting `peer_ca` (the web PKI's roots without one), and
/// presenting this arbiter's own certificate when it has one, for writers that require
/// client certificates.
pub(super) fn peer_tls(
    peer_ca: Option<&std::path::Path>,
    own: Option<&super::TlsFiles>,
) -> Result<ClientTlsConfig, ServerError> {
    use super::security::read;
    let mut tls = ClientTlsConfig::new();
    tls = match peer_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("peer CA", ca)?)),
        None => tls.with_webpki_roots(),
    };
    if let Some(own) = own {
        tls = tls.identity(Identity::from_pem(
            read("TLS certificate", &own.cert)?,
            read("TLS key", &own.key)?,
        ));
    }
    Ok(tls)
}

/// Why the cluster's forwarding key must not go to `address`: over plain `http://` to another
/// host, anyone on the path could read it and act as any principal. `None` for `https://` and
/// for loopback addresses.
fn exposes_key(address: &str) -> Option<String> {
    let uri: http::Uri = address.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!loopback).then(|| {
        format!(
            "this arbiter is a standby and will not forward an authenticated call to the writer \
             over plain http ({address}): the cluster's forwarding key would travel in clear; \
             serve TLS on the arbiters (--tls-cert, --tls-key, and --cluster-advertise \
             https://…), or send the call to the writer"
        )
    })
}

impl Forwarder {
    pub(super) fn new(
        writer: watch::Receiver<Option<SeenWriter>>,
        key: ClusterKey,
        tls: ClientTlsConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            writer,
            key,
            tls,
            channel: parking_lot::Mutex::new(None),
        })
    }

    /// Whether calls can be forwarded now, or why not: the writer must have been seen
    /// refreshing its lease within its time to live (so it is alive, with a quorum of NATS
    /// servers within reach; the lease is read every quarter of it), must advertise an
    /// address, and with authentication (`needs_key`) the cluster's key must be known.
    pub(super) fn ready(&self, lease_ttl: Duration, needs_key: bool) -> Result<(), String> {
        let writer = self.writer.borrow();
        let Some(writer) = writer.as_ref() else {
            return Err("no writer known".into());
        };
        let since = writer.refreshed.elapsed();
        if since > lease_ttl + lease_ttl / 4 {
            return Err(format!(
                "the writer's lease was last seen refreshed {:.1} s ago (writer down, or no \
                 quorum of NATS servers within reach)",
                since.as_secs_f64()
            ));
        }
        if writer.holder.address.is_none() {
            return Err(format!(
                "the writer ({}) advertises no address to forward to",
                writer.holder.name
            ));
        }
        if needs_key {
            if self.key.get().is_none() {
                return Err("the cluster's forwarding key is not read yet".into());
            }
            if let Some(why) = writer.holder.address.as_deref().and_then(exposes_key) {
                return Err(why);
            }
        }
        Ok(())
    }

    /// The writer's answer to `request`, or why it could not be asked.
    pub(super) async fn forward<B>(
        &self,
        request: http::Request<B>,
    ) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        match self.prepare(request) {
            Ok((channel, address, request)) => match channel.oneshot(request).await {
                Ok(response) => response,
                Err(e) => Status::unavailable(format!(
                    "this arbiter is a standby and could not forward the call to the writer at \
                     {address}: {e}; retry, or send it to the writer"
                ))
                .into_http(),
            },
            Err(status) => status.into_http(),
        }
    }

    /// The channel to the writer and `request` as it goes there.
    fn prepare<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<(Channel, String, http::Request<tonic::body::Body>), Status>
    where
        B: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        if request.headers().contains_key(FORWARDED) {
            return Err(Status::unavailable(
                "a call forwarded to this arbiter as the writer, but it is a standby (the \
                 writer changed meanwhile); retry",
            ));
        }
        let writer = self.writer.borrow().clone().map(|w| w.holder);
        let Some(address) = writer.as_ref().and_then(|w| w.address.clone()) else {
            return Err(Status::unavailable(format!(
                "this arbiter is a standby and does not know where to forward changes and \
                 results: the writer ({}) advertises no address (start arbiters with \
                 --cluster-advertise); send them to the writer, whose health \
                 arbiter.v1.Storage is SERVING",
                writer.map(|w| w.name).unwrap_or_default()
            )));
        };
        let channel = self.channel_to(&address)?;
        let (mut parts, body) = request.into_parts();
        let headers = &mut parts.headers;
        headers.insert(FORWARDED, HeaderValue::from_static("1"));
        match parts.extensions.get::<Caller>() {
            Some(Caller::Principal(principal)) => {
                if let Some(why) = exposes_key(&address) {
                    return Err(Status::unavailable(why));
                }
                let Some(key) = self.key.get() else {
                    return Err(Status::unavailable(
                        "this arbiter is a standby and has not read the cluster's forwarding \
                         key from NATS yet; retry",
                    ));
                };
                let name = HeaderValue::from_str(&principal.name)
                    .map_err(|e| Status::internal(format!("principal name as a header: {e}")))?;
                let key = HeaderValue::from_str(key)
                    .map_err(|e| Status::internal(format!("forwarding key as a header: {e}")))?;
                // The writer learns the caller from these, never from the caller's own token.
                headers.remove(http::header::AUTHORIZATION);
                headers.insert(FORWARDED_PRINCIPAL, name);
                headers.insert(FORWARD_KEY, key);
            }
            // Without authentication here, the writer judges the call as it comes.
            Some(Caller::Open) | None => {
                headers.remove(FORWARDED_PRINCIPAL);
                headers.remove(FORWARD_KEY);
            }
        }
        let request = http::Request::from_parts(parts, tonic::body::Body::new(body));
        Ok((channel, address, request))
    }

    /// The channel to `address`, made once per address.
    fn channel_to(&self, address: &str) -> Result<Channel, Status> {
        let mut current = self.channel.lock();
        if let Some((known, channel)) = current.as_ref() {
            if known == address {
                return Ok(channel.clone());
            }
        }
        let invalid = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!(
                "the writer advertises {address:?}, which cannot be called: {e}"
            ))
        };
        let mut endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| invalid(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            // A writer whose host vanished without closing connections is found out.
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if address.starts_with("https://") {
            endpoint = endpoint
                .tls_config(self.tls.clone())
                .map_err(|e| invalid(&e))?;
        }
        let channel = endpoint.connect_lazy();
        *current = Some((address.to_string(), channel.clone()));
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::exposes_key;

    #[test]
    fn the_key_goes_in_clear_only_to_loopback() {
        for safe in [
            "https://10.0.0.5:50051",
            "http://127.0.0.1:50051",
            "http://localhost:50051",
            "http://[::1]:50051",
        ] {
            assert_eq!(exposes_key(safe), None, "{safe}");
        }
        let why = exposes_key("http://10.0.0.5:50051").expect("exposed");
        assert!(
            why.contains("--tls-cert") && why.contains("10.0.0.5"),
            "{why}"
        );
    }
}
