//! The client certificate of a mutual-TLS connection, as the auth layer needs it: the subject
//! common name of the certificate the client presented (tonic puts the chain in the request's
//! connection info; the TLS handshake has already checked it against `--tls-client-ca`).

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tonic::transport::CertificateDer;

type Chain = Vec<CertificateDer<'static>>;

/// A remembered chain and its subject CN. The weak reference keeps the chain's allocation, not
/// its certificates, so its address stays its own while it is cached, at a few bytes per entry.
type Named = (Weak<Chain>, Option<Arc<str>>);

/// Connections' certificate chains this many at most are remembered; then the cache starts over.
const REMEMBERED_CHAINS: usize = 4096;

/// The subject CNs of client certificates, parsed once per connection rather than once per call
/// (a parse costs over a microsecond). tonic shares one chain (`Arc`) among a connection's
/// calls, so the chain's address is the key; the cache holds a weak reference to each chain it
/// names, so an address cannot be reused by another connection's chain while it is cached.
#[derive(Debug, Default)]
pub struct PeerNames {
    known: Mutex<HashMap<usize, Named>>,
}

impl PeerNames {
    /// `None` when the connection has no client certificate; else the subject CN of the peer's
    /// leaf certificate, `Some(None)` when it has no single UTF-8 CN.
    pub fn common_name<B>(&self, request: &http::Request<B>) -> Option<Option<Arc<str>>> {
        let info =
            request
                .extensions()
                .get::<tonic::transport::server::TlsConnectInfo<
                    tonic::transport::server::TcpConnectInfo,
                >>()?;
        let chain = info.peer_certs()?;
        let key = Arc::as_ptr(&chain) as usize;
        if let Some((_, name)) = self.known.lock().get(&key) {
            return Some(name.clone());
        }
        let name: Option<Arc<str>> = common_name(chain.first()?.as_ref()).map(Into::into);
        let mut known = self.known.lock();
        if known.len() >= REMEMBERED_CHAINS {
            known.clear();
        }
        known.insert(key, (Arc::downgrade(&chain), name.clone()));
        Some(name)
    }
}

/// The subject CN of a DER certificate; `None` without exactly one CN, or when it is not text.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let cn = names.next()?;
    if names.next().is_some() {
        return None; // which one names the client would be a guess
    }
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::common_name;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn certificate(cns: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["client".to_string()]).expect("params");
        params.distinguished_name = DistinguishedName::new();
        for cn in cns {
            params.distinguished_name.push(DnType::CommonName, *cn);
        }
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn a_certificate_names_a_principal_only_by_a_single_cn() {
        assert_eq!(
            common_name(&certificate(&["router-ny4"])).as_deref(),
            Some("router-ny4")
        );
        assert_eq!(common_name(&certificate(&[])), None);
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
