//! The client certificate of a mutual-TLS connection, as the auth layer needs it: the subject
//! common name of the certificate the client presented (tonic puts the chain in the request's
//! connection info; the TLS handshake has already checked it against `--tls-client-ca`).

/// The subject CN of the peer's leaf certificate, if the connection is TLS with one.
pub fn peer_common_name<B>(request: &http::Request<B>) -> Option<String> {
    let info = request
        .extensions()
        .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>(
        )?;
    let certs = info.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
