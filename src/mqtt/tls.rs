//! How the daemon proves itself to the broker: TLS (rustls with the `ring` provider, the
//! configured CA and, when given, a client certificate) and the username and password. Kept
//! apart from delivery because it is all file reading and error wording: every failure names
//! the configuration key. Built for every connection (a fresh client each time), and once at
//! start by [`check_tls`] so a bad certificate stops the start rather than every connection.

use std::sync::Arc;

use rumqttc::{TlsConfiguration, Transport};

use crate::config::{read_secret, Config};

/// The username and its password, if a username is configured. Without a password file the
/// password is empty; line ends after the password are dropped (files written with `echo`).
pub(super) fn credentials(config: &Config) -> Result<Option<(String, String)>, String> {
    let m = &config.mqtt;
    let Some(user) = &m.username else {
        return Ok(None);
    };
    let Some(file) = &m.password_file else {
        return Ok(Some((user.clone(), String::new())));
    };
    let secret = read_secret("mqtt.password_file", file)?;
    let pw = String::from_utf8(secret.0)
        .map_err(|_| "mqtt.password_file: the password is not UTF-8".to_string())?;
    Ok(Some((
        user.clone(),
        pw.trim_end_matches(['\n', '\r']).to_string(),
    )))
}

pub(super) fn tls_transport(config: &Config) -> Result<Transport, String> {
    Ok(Transport::tls_with_config(TlsConfiguration::Rustls(
        Arc::new(tls_config(config)?),
    )))
}

/// Build the TLS settings once at start, so a bad certificate or key stops the start with the
/// key's name instead of failing every connection attempt.
pub fn check_tls(config: &Config) -> Result<(), String> {
    if config.mqtt.host.is_some() && config.mqtt.tls {
        tls_config(config)?;
    }
    Ok(())
}

/// rustls with the `ring` provider (no C toolchain needed for aarch64), the configured CA
/// certificates and, when given, the client certificate.
fn tls_config(config: &Config) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let m = &config.mqtt;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &m.ca_file {
        let pem = read_secret("mqtt.ca_file", ca)?;
        for cert in CertificateDer::pem_slice_iter(&pem.0) {
            let cert = cert.map_err(|e| format!("mqtt.ca_file: {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("mqtt.ca_file: {}: {e}", ca.display()))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("tls: {e}"))?
    .with_root_certificates(roots);
    match (&m.client_cert_file, &m.client_key_file) {
        (Some(cert), Some(key_file)) => {
            let pem = read_secret("mqtt.client_cert_file", cert)?;
            let certs = CertificateDer::pem_slice_iter(&pem.0)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("mqtt.client_cert_file: {}: {e}", cert.display()))?;
            let key_pem = read_secret("mqtt.client_key_file", key_file)?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem.0)
                .map_err(|e| format!("mqtt.client_key_file: {}: {e}", key_file.display()))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                format!(
                    "mqtt.client_cert_file, mqtt.client_key_file: {}, {}: {e}",
                    cert.display(),
                    key_file.display()
                )
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
