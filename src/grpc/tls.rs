//! The client certificate of a mutual-TLS connection, as the auth layer needs it: the subject
//! common name of the certificate the client presented (tonic puts the chain in the request's
//! connection info; the TLS handshake has already checked it against `--tls-client-ca`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tonic::transport::CertificateDer;

type Chain = Arc<Vec<CertificateDer<'static>>>;

/// A remembered chain (kept alive so that its address stays its own) and its subject CN.
type Named = (Chain, Option<Arc<str>>);

/// Connections' certificate chains this many at most are remembered; then the cache starts over.
const REMEMBERED_CHAINS: usize = 4096;

/// The subject CNs of client certificates, parsed once per connection rather than once per call
/// (a parse costs over a microsecond). tonic shares one chain (`Arc`) among a connection's
/// calls, so the chain's address is the key; the cache holds each chain it names, so an address
/// cannot be reused by another connection's chain while it is cached.
#[derive(Debug, Default)]
pub struct PeerNames {
    known: Mutex<HashMap<usize, Named>>,
}

impl PeerNames {
    /// The subject CN of the peer's leaf certificate, if the connection is TLS with one.
    pub fn common_name<B>(&self, request: &http::Request<B>) -> Option<Arc<str>> {
        let info =
            request
                .extensions()
                .get::<tonic::transport::server::TlsConnectInfo<
                    tonic::transport::server::TcpConnectInfo,
                >>()?;
        let chain = info.peer_certs()?;
        let key = Arc::as_ptr(&chain) as usize;
        if let Some((_, name)) = self.known.lock().get(&key) {
            return name.clone();
        }
        let name: Option<Arc<str>> = common_name(chain.first()?.as_ref()).map(Into::into);
        let mut known = self.known.lock();
        if known.len() >= REMEMBERED_CHAINS {
            known.clear();
        }
        known.insert(key, (chain, name.clone()));
        name
    }
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
