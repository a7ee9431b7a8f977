//! `[[routes]]`: which origin serves which host and path, the `Grip-Sig` signer of each and the TLS setting of an
//! HTTPS origin (both built here, once).

use std::sync::Arc;

use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;

use super::check::{invalid, opt_secret, secret};
use super::conditional::{ConditionalConfig, RawConditional};
use super::ConfigError;
use crate::grip::sig::Signer;
use crate::tls::client::{self as tls_client, OriginTls, Trust};

/// The `Grip-Sig` key client libraries assume for a local proxy.
pub const DEFAULT_SIG_KEY: &str = "changeme";

/// `[[routes]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    /// Host to match, without port (`*` matches any).
    pub host: String,
    /// Path prefix to match (empty matches any).
    pub path_prefix: String,
    /// `http://host:port` or `https://host:port` of the origin (port 80 or 443 when absent).
    pub origin: String,
    /// `iss` claim of the `Grip-Sig` sent to this origin.
    pub sig_iss: String,
    /// Key of the `Grip-Sig`: the HS256 secret (the client libraries' local default is `changeme`), or for
    /// RS256/ES256 the PEM private key. Secret spec: literal, `env:NAME`, `file:PATH`, then optionally `base64:`.
    pub sig_key: String,
    /// `HS256` (default), `RS256` or `ES256`.
    pub sig_alg: String,
    /// An `https` origin's CA bundle (PEM), in place of the system's trusted roots: for an origin whose
    /// certificate a private CA issued. Secret spec (`file:PATH`, `env:NAME` or the PEM text).
    pub tls_ca: Option<String>,
    /// The name an `https` origin's certificate is verified against, and sent as SNI, in place of the origin
    /// URL's host: a DNS name or an IP address.
    pub tls_server_name: Option<String>,
    /// Accept any certificate from this `https` origin (no chain, name or expiry check). For tests only: a
    /// warning is logged at start-up.
    pub tls_skip_verify: bool,
    /// `[routes.conditional]`: hold conditional requests the origin answers `304` (an origin without GRIP).
    pub conditional: Option<RawConditional>,
}

impl Default for RawRoute {
    fn default() -> Self {
        RawRoute {
            host: "*".into(),
            path_prefix: String::new(),
            origin: "http://127.0.0.1:8080".into(),
            sig_iss: "pushpin".into(),
            sig_key: DEFAULT_SIG_KEY.into(),
            sig_alg: "HS256".into(),
            tls_ca: None,
            tls_server_name: None,
            tls_skip_verify: false,
            conditional: None,
        }
    }
}

/// A validated route. `Debug` shows the signer's issuer and algorithm, never its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// Lower-case host, or `None` for `*`.
    pub host: Option<String>,
    /// Path prefix (empty matches all).
    pub path_prefix: String,
    /// Origin scheme (http or https).
    pub scheme: Scheme,
    /// Origin host and port.
    pub authority: Authority,
    /// Signs the `Grip-Sig` of requests to this origin (compared by issuer, algorithm and key bytes).
    pub signer: Arc<Signer>,
    /// The TLS setting of an `https` origin (`None` for `http`); compared by the values configured.
    pub tls: Option<OriginTls>,
    /// Conditional holds for an origin that speaks no GRIP, if on.
    pub conditional: Option<Arc<ConditionalConfig>>,
}

/// Validates `[[routes]]`: at least one, each in turn.
pub(super) fn validate(routes: &[RawRoute]) -> Result<Vec<RouteConfig>, ConfigError> {
    if routes.is_empty() {
        return Err(invalid(
            "routes",
            "at least one route is needed (or give --origin)",
        ));
    }
    let mut configs = TlsConfigs::default();
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| route(i, r, &mut configs))
        .collect()
}

/// Start-up warnings about routes: origins whose certificates are not verified.
pub(super) fn warnings(routes: &[RouteConfig], out: &mut Vec<String>) {
    for (i, r) in routes.iter().enumerate() {
        if r.tls.as_ref().is_some_and(OriginTls::skips_verify) {
            out.push(format!(
                "routes[{i}].tls_skip_verify: the certificate of origin https://{} is not verified: anyone on \
                 the network path can impersonate it",
                r.authority
            ));
        }
    }
}

/// The client configs built so far for one config, by trust (the CA bundle's bytes, or skip): routes with the
/// same trust share one, and with it its session store. The system's roots have one config per process.
#[derive(Default)]
struct TlsConfigs {
    built: Vec<(TrustKey, Arc<rustls::ClientConfig>)>,
}

/// The trust a client config was built for: the CA bundle's bytes, and whether verification is skipped.
type TrustKey = (Option<Box<[u8]>>, bool);

impl TlsConfigs {
    fn get(
        &mut self,
        key: &str,
        ca: Option<&[u8]>,
        skip_verify: bool,
    ) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        if ca.is_none() && !skip_verify {
            return tls_client::system_http1_config().map_err(|e| invalid(key, e.to_string()));
        }
        if let Some((_, config)) = self
            .built
            .iter()
            .find(|((c, s), _)| c.as_deref() == ca && *s == skip_verify)
        {
            return Ok(config.clone());
        }
        let trust = match ca {
            Some(pem) => Trust::Roots(Arc::new(
                crate::tls::pem::roots(pem).map_err(|e| invalid(key, e.to_string()))?,
            )),
            None => Trust::Insecure,
        };
        let config = tls_client::http1_config(&trust).map_err(|e| invalid(key, e.to_string()))?;
        self.built
            .push(((ca.map(Into::into), skip_verify), config.clone()));
        Ok(config)
    }
}

/// The TLS setting of route `i`: `None` for an `http` origin, which must then have no `tls_*` key.
fn origin_tls(
    i: usize,
    r: &RawRoute,
    scheme: &Scheme,
    authority: &Authority,
    configs: &mut TlsConfigs,
) -> Result<Option<OriginTls>, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    if *scheme != Scheme::HTTPS {
        let given = [
            ("tls_ca", r.tls_ca.is_some()),
            ("tls_server_name", r.tls_server_name.is_some()),
            ("tls_skip_verify", r.tls_skip_verify),
        ];
        return match given.iter().find(|(_, set)| *set) {
            Some((k, _)) => Err(invalid(
                key(k),
                format!("only for an https:// origin (origin is {:?})", r.origin),
            )),
            None => Ok(None),
        };
    }
    if r.tls_skip_verify && r.tls_ca.is_some() {
        return Err(invalid(
            key("tls_skip_verify"),
            "cannot be combined with tls_ca (nothing would be verified against it)",
        ));
    }
    let ca = opt_secret(&key("tls_ca"), r.tls_ca.as_deref())?;
    let server_name = match &r.tls_server_name {
        Some(name) => {
            tls_client::server_name(name.trim()).map_err(|e| invalid(key("tls_server_name"), e))?
        }
        None => tls_client::server_name(authority.host()).map_err(|e| {
            invalid(
                key("origin"),
                format!("{e}: set routes[{i}].tls_server_name to the name its certificate carries"),
            )
        })?,
    };
    let config = configs.get(&key("tls_ca"), ca.as_deref(), r.tls_skip_verify)?;
    Ok(Some(OriginTls::new(
        config,
        server_name,
        ca.map(Into::into),
        r.tls_skip_verify,
    )))
}

fn route(i: usize, r: &RawRoute, configs: &mut TlsConfigs) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let (scheme, authority) = origin(&key("origin"), &r.origin)?;
    let host = match r.host.trim() {
        "" => return Err(invalid(key("host"), "empty (use \"*\" to match any host)")),
        "*" => None,
        h => Some(h.to_ascii_lowercase()),
    };
    if !r.path_prefix.is_empty() && !r.path_prefix.starts_with('/') {
        return Err(invalid(
            key("path_prefix"),
            format!("{:?} must start with /", r.path_prefix),
        ));
    }
    if r.sig_iss.is_empty() {
        return Err(invalid(key("sig_iss"), "must not be empty"));
    }
    let sig_key = secret(&key("sig_key"), &r.sig_key)?;
    let sig_alg = match r.sig_alg.as_str() {
        "HS256" => jsonwebtoken::Algorithm::HS256,
        "RS256" => jsonwebtoken::Algorithm::RS256,
        "ES256" => jsonwebtoken::Algorithm::ES256,
        other => {
            return Err(invalid(
                key("sig_alg"),
                format!("{other:?} is not supported (expected HS256, RS256 or ES256)"),
            ))
        }
    };
    let signer = Signer::new(&r.sig_iss, sig_alg, &sig_key)
        .map_err(|e| invalid(key("sig_key"), e.to_string()))?;
    let tls = origin_tls(i, r, &scheme, &authority, configs)?;
    let conditional = match &r.conditional {
        Some(c) => Some(Arc::new(super::conditional::validate(i, c)?)),
        None => None,
    };
    Ok(RouteConfig {
        host,
        path_prefix: r.path_prefix.clone(),
        scheme,
        authority,
        signer: Arc::new(signer),
        tls,
        conditional,
    })
}

/// An origin URL's scheme and authority; the error (under `key`) quotes the URL.
fn origin(key: &str, url: &str) -> Result<(Scheme, Authority), ConfigError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(key, format!("{url:?}: {e}")))?;
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
        Some(s) => {
            return Err(invalid(
                key,
                format!(
                    "{url:?}: unsupported scheme {:?} (expected http or https)",
                    s.as_str()
                ),
            ))
        }
        None => return Err(invalid(key, format!("{url:?}: expected http://host:port"))),
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(key, format!("{url:?}: no host")))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            key,
            format!("{url:?}: an origin is scheme://host:port, without a path"),
        ));
    }
    Ok((scheme, authority))
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;
    use super::super::Config;

    #[test]
    fn rule_messages() {
        let cases = [
            (
                r#"[[routes]]
origin = "htp://app:8080""#,
                r#"routes[0].origin: "htp://app:8080": unsupported scheme "htp" (expected http or https)"#,
            ),
            (
                r#"[[routes]]
origin = "app:8080""#,
                r#"routes[0].origin: "app:8080": expected http://host:port"#,
            ),
            (
                r#"[[routes]]
origin = "http://app:8080/api""#,
                r#"routes[0].origin: "http://app:8080/api": an origin is scheme://host:port, without a path"#,
            ),
            (
                r#"[[routes]]
origin = "http://a:1"
path_prefix = "api""#,
                r#"routes[0].path_prefix: "api" must start with /"#,
            ),
            (
                "routes = []",
                "routes: at least one route is needed (or give --origin)",
            ),
            (
                "[[routes]]\nhost = \" \"",
                r#"routes[0].host: empty (use "*" to match any host)"#,
            ),
            (
                "[[routes]]\nsig_iss = \"\"",
                "routes[0].sig_iss: must not be empty",
            ),
            (
                "[[routes]]\nsig_alg = \"PS256\"",
                r#"routes[0].sig_alg: "PS256" is not supported (expected HS256, RS256 or ES256)"#,
            ),
            (
                "[[routes]]\norigin = \"http://a:1\"\ntls_ca = \"x\"",
                r#"routes[0].tls_ca: only for an https:// origin (origin is "http://a:1")"#,
            ),
            (
                "[[routes]]\norigin = \"http://a:1\"\ntls_server_name = \"a\"",
                r#"routes[0].tls_server_name: only for an https:// origin (origin is "http://a:1")"#,
            ),
            (
                "[[routes]]\norigin = \"https://a:1\"\ntls_ca = \"hello\"",
                "routes[0].tls_ca: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            ),
            (
                "[[routes]]\norigin = \"https://a:1\"\ntls_server_name = \"not a name\"",
                r#"routes[0].tls_server_name: "not a name" is not a valid DNS name or IP address"#,
            ),
            (
                "[[routes]]\norigin = \"https://a:1\"\ntls_skip_verify = true\ntls_ca = \"x\"",
                "routes[0].tls_skip_verify: cannot be combined with tls_ca (nothing would be verified against it)",
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
        }
        let e = err("[[routes]]\nsig_alg = \"RS256\"\nsig_key = \"s3cret\"");
        assert!(
            e.starts_with("routes[0].sig_key: not a PEM RSA private key: "),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn https_origins_share_client_configs_and_compare_by_setting() {
        let toml = "[[routes]]\norigin = \"https://a.test\"\n\
                    [[routes]]\norigin = \"https://b.test:8443\"\ntls_skip_verify = true\n\
                    [[routes]]\norigin = \"https://[::1]\"\ntls_skip_verify = true\n\
                    tls_server_name = \"c.test\"";
        let c = Config::from_toml_str(toml).unwrap();
        let tls = |i: usize| c.routes[i].tls.as_ref().unwrap();
        assert_eq!(
            tls(1).config_id(),
            tls(2).config_id(),
            "one config per trust"
        );
        assert_ne!(tls(0).config_id(), tls(1).config_id());
        let again = Config::from_toml_str(toml).unwrap();
        assert_ne!(
            tls(1).config_id(),
            again.routes[1].tls.as_ref().unwrap().config_id()
        );
        assert_eq!(c, again, "compared by the settings, not the configs built");
        assert_ne!(c.routes[1], c.routes[2]);
        let warnings = c.warnings();
        assert!(
            warnings.iter().any(|w| w.starts_with(
                "routes[1].tls_skip_verify: the certificate of origin https://b.test:8443 is not verified"
            )),
            "{warnings:?}"
        );
        assert!(warnings
            .iter()
            .any(|w| w.starts_with("routes[2].tls_skip_verify")));
        assert!(c.routes[0].tls.as_ref().is_some_and(|t| !t.skips_verify()));
    }

    #[test]
    fn signers_are_built_once_and_compared_by_key() {
        let routes = |toml: &str| Config::from_toml_str(toml).unwrap().routes;
        let a = routes("[[routes]]\nsig_key = \"k-s3cret\"");
        assert_eq!(a, routes("[[routes]]\nsig_key = \"k-s3cret\""));
        assert_ne!(a, routes("[[routes]]\nsig_key = \"other\""));
        assert_eq!(a[0].signer.iss(), "pushpin");
        assert!(!format!("{a:?}").contains("k-s3cret"));
    }
}
