//! `[tls]`: the HTTPS listener for clients, beside the plain one: its address, its default certificate, and more
//! certificates chosen by the name a client asks for (SNI). Certificates are loaded here, so a bad one is a start-up
//! error naming its key, and a reload that brings one is refused.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{addr, invalid, secret};
use super::ConfigError;
use crate::tls::server::{Certificate, CertificateError, Certificates, HostPattern};

/// `[tls]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// Address of the HTTPS listener for clients (none unless set).
    pub listen: Option<String>,
    /// The default certificate chain, PEM (end-entity first), as a secret spec (usually `file:PATH`).
    pub cert: Option<String>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1), as a secret spec.
    pub key: Option<String>,
    /// Certificates for other names, chosen by the client's SNI.
    pub sni: Vec<RawSni>,
}

/// One `[[tls.sni]]` entry as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSni {
    /// Names this certificate serves: `api.example.com`, or `*.example.com` for any one label before it.
    pub hosts: Vec<String>,
    /// Certificate chain, PEM, as a secret spec.
    pub cert: String,
    /// Private key, PEM, as a secret spec.
    pub key: String,
}

/// The validated HTTPS listener. Compared by address and by the PEM text of every certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// What it serves.
    pub certificates: Certificates,
}

/// Validates `[tls]`: none, or a listener with a loadable default certificate; its address must not be another
/// listener's.
pub(super) fn validate(
    t: &RawTls,
    taken: &[(&str, SocketAddr)],
) -> Result<Option<TlsConfig>, ConfigError> {
    let Some(listen) = t.listen.as_deref() else {
        if t.cert.is_some() || t.key.is_some() || !t.sni.is_empty() {
            return Err(invalid(
                "tls.listen",
                "not set, but certificates are: set it to serve HTTPS (e.g. \"0.0.0.0:8443\")",
            ));
        }
        return Ok(None);
    };
    let listen = addr("tls.listen", listen)?;
    if let Some((other, _)) = taken
        .iter()
        .find(|(_, a)| listen.port() != 0 && *a == listen)
    {
        return Err(invalid("tls.listen", format!("must differ from {other}")));
    }
    let required = |key: &str, value: &Option<String>| {
        value
            .clone()
            .ok_or_else(|| invalid(key, "required with tls.listen"))
    };
    let default = certificate(
        ("tls.cert", &required("tls.cert", &t.cert)?),
        ("tls.key", &required("tls.key", &t.key)?),
    )?;
    let mut certificates = Certificates::new(default);
    for (i, sni) in t.sni.iter().enumerate() {
        let key = |k: &str| format!("tls.sni[{i}].{k}");
        if sni.hosts.is_empty() {
            return Err(invalid(key("hosts"), "must name at least one host"));
        }
        let hosts = sni
            .hosts
            .iter()
            .map(|h| {
                HostPattern::parse(h).ok_or_else(|| {
                    invalid(
                        key("hosts"),
                        format!("{h:?} is not a host name (or *.name)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cert = certificate((&key("cert"), &sni.cert), (&key("key"), &sni.key))?;
        certificates.add(hosts, cert);
    }
    Ok(Some(TlsConfig {
        listen,
        certificates,
    }))
}

/// Loads one certificate; an error names the key (of the chain or of the private key) it is about.
pub(super) fn certificate(
    (cert_key, cert_spec): (&str, &str),
    (key_key, key_spec): (&str, &str),
) -> Result<Certificate, ConfigError> {
    let chain = secret(cert_key, cert_spec)?;
    let key = secret(key_key, key_spec)?;
    Certificate::from_pem(&chain, &key).map_err(|e| match e {
        CertificateError::Pem(e @ crate::tls::pem::PemError::NoKey) => {
            invalid(key_key, e.to_string())
        }
        CertificateError::Pem(e) => invalid(cert_key, e.to_string()),
        CertificateError::Key(reason) => invalid(key_key, reason),
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;
    use super::super::Config;

    /// A certificate and key written to files; returns their specs.
    fn files(name: &str, hosts: &[&str]) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(
            hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "grip-proxy-config-tls-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        (
            format!("file:{}", cert.display()),
            format!("file:{}", key.display()),
        )
    }

    #[test]
    fn rule_messages() {
        let (cert, key) = files("rules", &["a.test"]);
        let (_, other_key) = files("rules-other", &["b.test"]);
        let cases = [
            (
                format!("[tls]\ncert = \"{cert}\""),
                "tls.listen: not set, but certificates are: set it to serve HTTPS (e.g. \"0.0.0.0:8443\")"
                    .to_owned(),
            ),
            (
                "[tls]\nlisten = \"127.0.0.1:8443\"".to_owned(),
                "tls.cert: required with tls.listen".to_owned(),
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\""),
                "tls.key: required with tls.listen".to_owned(),
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:7999\"\ncert = \"{cert}\"\nkey = \"{key}\"\n[proxy]\nlisten = \"127.0.0.1:7999\""),
                "tls.listen: must differ from proxy.listen".to_owned(),
            ),
            (
                "[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"file:/nonexistent/cert.pem\"\nkey = \"k\"".to_owned(),
                "tls.cert: cannot read /nonexistent/cert.pem: No such file or directory (os error 2)".to_owned(),
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"not pem\"\nkey = \"{key}\""),
                "tls.cert: no PEM certificate (-----BEGIN CERTIFICATE-----) found".to_owned(),
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\"\nkey = \"{cert}\""),
                "tls.key: no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) found".to_owned(),
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\"\nkey = \"{other_key}\""),
                "tls.key: the private key does not belong to the certificate".to_owned(),
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\"\nkey = \"{key}\"\n[[tls.sni]]\ncert = \"{cert}\"\nkey = \"{key}\""),
                "tls.sni[0].hosts: must name at least one host".to_owned(),
            ),
            (
                format!("[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\"\nkey = \"{key}\"\n[[tls.sni]]\nhosts = [\"a..b\"]\ncert = \"{cert}\"\nkey = \"{key}\""),
                "tls.sni[0].hosts: \"a..b\" is not a host name (or *.name)".to_owned(),
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(&toml), want, "{toml}");
        }
        let ok = format!(
            "[tls]\nlisten = \"127.0.0.1:8443\"\ncert = \"{cert}\"\nkey = \"{key}\"\n[[tls.sni]]\nhosts = [\"*.b.test\"]\ncert = \"{cert}\"\nkey = \"{key}\""
        );
        let tls = Config::from_toml_str(&ok).unwrap().tls.unwrap();
        assert_eq!(tls.listen.to_string(), "127.0.0.1:8443");
        assert!(
            Config::from_toml_str("").unwrap().tls.is_none(),
            "off by default"
        );
    }
}
