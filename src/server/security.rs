//! What the server needs to know about its callers: the auth file, TLS, and the rule that a
//! server without authentication serves only on a loopback address unless the operator insists
//! (`--insecure-allow-unauthenticated`).

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use tonic::transport::server::ServerTlsConfig;
use tonic::transport::{Certificate, Identity as TlsIdentity};

use crate::auth::{Authenticator, RateLimits};

use super::ServerError;

/// Authentication and TLS settings.
#[derive(Debug, Clone, Default)]
pub struct SecurityConfig {
    /// The principals (`--auth-file`); `None` runs without authentication.
    pub auth_file: Option<PathBuf>,
    /// TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`); `None` serves plain HTTP/2.
    pub tls: Option<TlsFiles>,
    /// Serve without authentication on a non-loopback address.
    pub insecure_allow_unauthenticated: bool,
    /// The keys artifact signatures are checked against (`--trusted-signers`).
    pub trusted_signers: Option<PathBuf>,
    /// Calls per second per principal, by kind of call.
    pub rate_limits: RateLimits,
}

/// PEM files of the server's TLS identity, and of the CA its clients' certificates must chain
/// to (which makes client certificates required).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA of client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// The bytes of the `what` file at `path`, or an error naming both.
pub(super) fn read(what: &str, path: &std::path::Path) -> Result<Vec<u8>, ServerError> {
    std::fs::read(path)
        .map_err(|e| ServerError::Security(format!("reading the {what} {}: {e}", path.display())))
}

impl SecurityConfig {
    /// Loads the auth file, if any.
    pub fn authenticator(&self) -> Result<Option<Arc<Authenticator>>, ServerError> {
        self.auth_file
            .as_deref()
            .map(|path| {
                Authenticator::open(path)
                    .map(Arc::new)
                    .map_err(|e| ServerError::Security(e.to_string()))
            })
            .transpose()
    }

    /// The trusted signers, if a file names them.
    pub fn trusted_signers(
        &self,
    ) -> Result<Option<crate::registry::signing::TrustedSigners>, ServerError> {
        self.trusted_signers
            .as_deref()
            .map(|path| {
                crate::registry::signing::TrustedSigners::load(path).map_err(ServerError::Security)
            })
            .transpose()
    }

    /// The TLS configuration, if any.
    pub fn tls(&self) -> Result<Option<ServerTlsConfig>, ServerError> {
        let Some(files) = &self.tls else {
            return Ok(None);
        };
        let identity = TlsIdentity::from_pem(
            read("TLS certificate", &files.cert)?,
            read("TLS key", &files.key)?,
        );
        let mut tls = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &files.client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("client CA", ca)?));
        }
        Ok(Some(tls))
    }

    /// Logs settings that undo part of what an auth file is for.
    pub fn warn_about(&self, auth: &Authenticator, allow_self_approval: bool) {
        if allow_self_approval {
            tracing::warn!(
                "--allow-self-approval: a principal may approve its own model for PRODUCTION \
                 (the four-eyes rule is off)"
            );
        }
        let client_certificates = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if auth.certificate_principals() > 0 && !client_certificates {
            tracing::warn!(
                principals = auth.certificate_principals(),
                "the auth file names principals by certificate (cert_subject_cn), but without \
                 --tls-client-ca no client presents one: they cannot authenticate"
            );
        }
    }

    /// Refuses to serve without authentication anywhere but on loopback, unless asked to.
    pub fn check_exposure(
        &self,
        authenticated: bool,
        addr: std::net::SocketAddr,
    ) -> Result<(), ServerError> {
        if authenticated {
            return Ok(());
        }
        if !addr.ip().is_loopback() && !self.insecure_allow_unauthenticated {
            return Err(ServerError::Security(format!(
                "refusing to serve {addr} without authentication: anyone who reaches it could \
                 promote models and stop tests; give --auth-file, or listen on a loopback \
                 address, or pass --insecure-allow-unauthenticated"
            )));
        }
        tracing::warn!(
            listen = %addr,
            "serving without authentication: every caller may do everything (give --auth-file)"
        );
        Ok(())
    }
}

/// Reloads the auth file on every SIGHUP until `stopped`; a file that does not load keeps the
/// current one.
pub async fn reload_on_sighup(
    auth: Weak<Authenticator>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: the auth file will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                hangup = hangups.recv() => if hangup.is_none() { return },
                _ = stopped.wait_for(|&stop| stop) => return,
            }
            let Some(auth) = auth.upgrade() else { return };
            match auth.reload() {
                Ok(n) => tracing::info!(principals = n, "auth file reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "auth file not reloaded; the previous one stays")
                }
            }
        }
    }
    #[cfg(not(unix))]
    drop((auth, stopped));
}
