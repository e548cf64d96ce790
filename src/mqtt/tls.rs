//! How the daemon proves itself to the broker: TLS (rustls with the `ring` provider, the
//! configured CA and, when given, a client certificate) and the username and password. Kept
//! apart from delivery because it is all file reading and error wording: every failure names
//! the configuration key. Read once, at start ([`Credentials::load`], also run by
//! `check-config`), so a missing password file or a bad certificate stops the start with the
//! key's name instead of failing every connection; a changed file takes effect at restart.

use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::config::{read_secret, Config};

/// The login and TLS settings every connection uses. Debug never shows the password.
#[derive(Clone, Default)]
pub struct Credentials {
    login: Option<(String, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.login.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Credentials {
    /// Read the password, CA and client certificate files the config names.
    pub fn load(config: &Config) -> Result<Credentials, String> {
        Ok(Credentials {
            login: credentials(config)?,
            tls: if config.mqtt.tls {
                Some(Arc::new(tls_config(config)?))
            } else {
                None
            },
        })
    }

    pub(super) fn apply(&self, options: &mut MqttOptions) {
        if let Some((user, password)) = &self.login {
            options.set_credentials(user, password);
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
    }
}

/// Once per start: a plain-TCP broker link was accepted (`mqtt.allow_insecure`); say what
/// travels in clear.
pub fn warn_if_insecure(config: &Config) {
    let m = &config.mqtt;
    if let (Some(host), false) = (&m.host, m.tls) {
        let password = if m.password_file.is_some() {
            ", the password too"
        } else {
            ""
        };
        log::warn!(
            "mqtt: plain TCP to {host}:{} (mqtt.allow_insecure = true): results with their context and commands travel unencrypted{password}",
            m.port
        );
    }
}

/// The username and its password, if a username is configured. Without a password file the
/// password is empty; line ends after the password are dropped (files written with `echo`).
fn credentials(config: &Config) -> Result<Option<(String, String)>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    #[test]
    fn secrets_are_read_at_load_and_never_shown() {
        // Parsing reads no secrets; loading names the key of the file it cannot read.
        let c = config("[mqtt]\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n");
        let e = Credentials::load(&c).unwrap_err();
        assert!(e.starts_with("mqtt.password_file"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let c = config(&format!(
            "[mqtt]\nusername = \"u\"\npassword_file = \"{}\"\n",
            pw.display()
        ));
        let creds = Credentials::load(&c).unwrap();
        assert_eq!(creds.login, Some(("u".into(), "hunter2".into())));
        assert!(!format!("{creds:?}").contains("hunter2"));
    }
}
