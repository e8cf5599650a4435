//! Authentication at the edge: a tower layer that, when the server has an auth file,
//! authenticates every call to an arbiter service (bearer token, or client certificate under
//! mTLS), checks the role of the method's row, and hands the [`Identity`] to the handlers as a
//! request extension. Health and reflection stay open. Without an auth file every call gets
//! [`Identity::Open`]. Handlers narrow the check where the method's row depends on the request
//! ([`require`]) and take their actor from the identity ([`actor`]). In cluster mode, a call
//! forwarded by another arbiter of the cluster is its caller's, as that arbiter authenticated
//! it ([`super::forwarded`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;

use super::forwarded::{ClusterKey, FORWARDED_PRINCIPAL, FORWARD_KEY};
use super::tls::PeerNames;
use crate::auth::{Actor, ActorError, Authenticator, Identity, Role};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
    cluster_key: ClusterKey,
}

impl AuthLayer {
    /// Authenticates with `auth`, or lets every call through as [`Identity::Open`] when `None`.
    /// Calls forwarded with `cluster_key` are their forwarded principal's.
    pub fn new(auth: Option<Arc<Authenticator>>, cluster_key: ClusterKey) -> Self {
        Self { auth, cluster_key }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticate {
            inner,
            auth: self.auth.clone(),
            cluster_key: self.cluster_key.clone(),
            peers: Arc::default(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticate<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
    cluster_key: ClusterKey,
    peers: Arc<PeerNames>,
}

/// Paths that need no credentials.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.") || path.starts_with("/grpc.reflection.")
}

/// The token of an `authorization: Bearer <token>` header, `None` without one. A request that
/// has the header must have exactly one, well formed, with a token: it never falls back to the
/// client certificate.
fn bearer<B>(request: &http::Request<B>) -> Result<Option<&str>, Status> {
    let mut values = request
        .headers()
        .get_all(http::header::AUTHORIZATION)
        .iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Status::unauthenticated(
            "more than one authorization header; send one `authorization: Bearer <token>`",
        ));
    }
    let malformed = || Status::unauthenticated("the authorization header must be `Bearer <token>`");
    let (scheme, token) = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(Some(token))
}

/// The principal another arbiter of the cluster forwarded `request` for, `None` when it is not
/// forwarded. The forwarding arbiter must present the cluster's key, and the principal must
/// be in this arbiter's auth file, whose roles for it apply.
fn forwarded_principal<B>(
    auth: &Authenticator,
    cluster_key: &ClusterKey,
    request: &http::Request<B>,
) -> Result<Option<Arc<crate::auth::Principal>>, Status> {
    let headers = request.headers();
    let Some(name) = headers.get(FORWARDED_PRINCIPAL) else {
        return Ok(None);
    };
    if cluster_key.get().is_none() {
        // In cluster mode the key comes from NATS soon after the start; outside it, never.
        return Err(Status::unavailable(
            "a forwarded call, but this arbiter has not read the cluster's forwarding key \
             (yet, or it is not in cluster mode); retry",
        ));
    }
    let key = headers
        .get(FORWARD_KEY)
        .map(|k| k.as_bytes())
        .unwrap_or(b"");
    if !cluster_key.verifies(key) {
        return Err(Status::unauthenticated(format!(
            "{FORWARDED_PRINCIPAL} without this cluster's forwarding key: only an arbiter of \
             the same cluster may forward calls"
        )));
    }
    let name = name.to_str().unwrap_or("");
    auth.named(name).map(Some).ok_or_else(|| {
        Status::unauthenticated(format!(
            "the forwarded principal {name:?} is not in this arbiter's auth file (arbiters \
             of one cluster need the same auth file)"
        ))
    })
}

/// Who `request` comes from, or the status that refuses it. A call forwarded by an arbiter of
/// the cluster is its forwarded principal's; else a bearer token decides when there is one,
/// and the client certificate when not.
fn identify<B>(
    auth: &Authenticator,
    cluster_key: &ClusterKey,
    peers: &PeerNames,
    request: &http::Request<B>,
) -> Result<Identity, Status> {
    let principal =
        match forwarded_principal(auth, cluster_key, request)? {
            Some(principal) => Ok(principal),
            None => match bearer(request)? {
                Some(token) => auth.authenticate(Some(token), None),
                None => match peers.common_name(request) {
                    Some(None) => return Err(Status::unauthenticated(
                        "the client certificate has no single text subject CN to name a principal",
                    )),
                    Some(Some(cn)) => auth.authenticate(None, Some(&cn)),
                    None => auth.authenticate(None, None),
                },
            },
        }
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
    let path = request.uri().path();
    if let Some(roles) = Role::for_method(path) {
        if !roles.iter().any(|&role| principal.has(role)) {
            let names: Vec<String> = roles.iter().map(|r| format!("{:?}", r.name())).collect();
            return Err(Status::permission_denied(format!(
                "principal {:?} lacks the role {} that {path} needs",
                principal.name,
                names.join(" or ")
            )));
        }
    }
    Ok(Identity::Principal(principal))
}

impl<S, B, R> tower::Service<http::Request<B>> for Authenticate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let identity = match &self.auth {
            None => Identity::Open,
            Some(_) if is_open(request.uri().path()) => Identity::Open,
            Some(auth) => match identify(auth, &self.cluster_key, &self.peers, &request) {
                Ok(identity) => identity,
                Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
            },
        };
        request.extensions_mut().insert(identity);
        Box::pin(self.inner.call(request))
    }
}

/// Whether `identity` still holds: a stream checks it at every message, so a principal removed
/// (or changed) by a reload of the auth file cannot keep streaming on a call it opened before.
pub fn still_valid(identity: &Identity) -> Result<(), Status> {
    match identity {
        Identity::Principal(p) if p.is_revoked() => Err(Status::unauthenticated(format!(
            "the credential of principal {:?} was revoked by a reload of the auth file",
            p.name
        ))),
        _ => Ok(()),
    }
}

/// The caller of `request`. Fails closed: a request that did not pass the layer is refused.
pub fn identity<T>(request: &tonic::Request<T>) -> Result<Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::internal("request without an identity; see the server log"))
}

/// Refuses a principal without `role` (PERMISSION_DENIED naming it); [`Identity::Open`] passes.
pub fn require(identity: &Identity, role: Role, what: &str) -> Result<(), Status> {
    match identity {
        Identity::Principal(p) if !p.has(role) => Err(Status::permission_denied(format!(
            "principal {:?} lacks the role {:?} that {what} needs",
            p.name,
            role.name()
        ))),
        _ => Ok(()),
    }
}

/// The actor of a change whose request says `claimed` in `field`.
pub fn actor(identity: &Identity, field: &'static str, claimed: &str) -> Result<Actor, Status> {
    Actor::resolve(identity, field, claimed).map_err(|e| match e {
        ActorError::NotThePrincipal { .. } => Status::permission_denied(e.to_string()),
        ActorError::Invalid { .. } => Status::invalid_argument(e.to_string()),
    })
}
