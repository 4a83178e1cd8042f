//! TLS for the TCP listener (rustls, with the *ring* provider): a certificate chain and its
//! private key from PEM files, and the rule that only loopback may be served in plaintext.

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::ServerError;

/// The PEM files of the listener's certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, the server's own first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1), readable by its owner only.
    pub key: PathBuf,
}

/// The rustls configuration of `files`.
pub(crate) fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServerError> {
    let tls_error = |path: &Path, what: String| ServerError::Tls {
        path: path.to_path_buf(),
        what,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| tls_error(&files.cert, format!("not a PEM certificate file: {error}")))?;
    if chain.is_empty() {
        return Err(tls_error(&files.cert, "holds no certificate".to_owned()));
    }
    check_private(&files.key)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|error| tls_error(&files.key, format!("not a PEM private key: {error}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|error| {
            tls_error(
                &files.key,
                format!("does not go with the certificate of --tls-cert: {error}"),
            )
        })
}

/// A private key file that others can read is refused: it may already be known.
fn check_private(path: &Path) -> Result<(), ServerError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).map_err(|error| ServerError::Tls {
        path: path.to_path_buf(),
        what: format!("cannot be read: {error}"),
    })?;
    let mode = metadata.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ServerError::Tls {
            path: path.to_path_buf(),
            what: format!(
                "has mode {:o}: a private key must be readable by its owner only (chmod 600)",
                mode & 0o777
            ),
        });
    }
    Ok(())
}

/// Plaintext HTTP is refused on an address that is not loopback, unless the operator says
/// `--insecure-plaintext`: requests and answers would cross a network in the clear.
pub(crate) fn check_plaintext(address: &str, insecure_plaintext: bool) -> Result<(), ServerError> {
    if insecure_plaintext {
        return Ok(());
    }
    let resolved: Vec<_> = address
        .to_socket_addrs()
        .map_err(|error| ServerError::Listen {
            address: address.to_owned(),
            error,
        })?
        .collect();
    if resolved.is_empty() || resolved.iter().any(|socket| !socket.ip().is_loopback()) {
        return Err(ServerError::Plaintext {
            address: address.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_served_in_plaintext_without_the_flag() {
        assert!(check_plaintext("127.0.0.1:0", false).is_ok());
        assert!(check_plaintext("[::1]:0", false).is_ok());
        let refused = check_plaintext("0.0.0.0:0", false).map_err(|error| error.to_string());
        assert!(refused
            .as_ref()
            .is_err_and(|message| message.contains("--insecure-plaintext")));
        assert!(check_plaintext("0.0.0.0:0", true).is_ok());
    }
}
