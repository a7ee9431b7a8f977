//! The route table: (host, path prefix) to an origin, its `Grip-Sig` signer and its TLS setting. Immutable; a
//! pure lookup.

use std::sync::Arc;

use http::uri::{Authority, Scheme};

use crate::config::{ConditionalConfig, RouteConfig};
use crate::grip::sig::Signer;
use crate::tls::client::OriginTls;

/// Where matching requests go.
#[derive(Debug)]
pub(crate) struct Route {
    /// Index in the config, for logs.
    pub index: usize,
    /// Host this route matches (`None`: any).
    pub host: Option<String>,
    /// Path prefix this route matches.
    pub path_prefix: String,
    /// Origin scheme.
    pub scheme: Scheme,
    /// Origin host and port.
    pub authority: Authority,
    /// Signs requests to this origin (built with the config, shared with it).
    pub signer: Arc<Signer>,
    /// An `https` origin's TLS setting (built with the config, shared with it).
    pub tls: Option<OriginTls>,
    /// Conditional holds (an origin that speaks no GRIP), if on.
    pub conditional: Option<Arc<ConditionalConfig>>,
}

/// Routes sorted most specific first: exact hosts before `*`, then longer path prefixes first.
#[derive(Debug, Clone)]
pub(crate) struct RouteTable {
    routes: Arc<[Route]>,
}

impl RouteTable {
    /// Builds the table from validated routes.
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        let mut list: Vec<Route> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| Route {
                index,
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone(),
                scheme: r.scheme.clone(),
                authority: r.authority.clone(),
                signer: r.signer.clone(),
                tls: r.tls.clone(),
                conditional: r.conditional.clone(),
            })
            .collect();
        // Stable sort keeps file order among equally specific routes.
        list.sort_by_key(|r| (r.host.is_none(), std::cmp::Reverse(r.path_prefix.len())));
        RouteTable {
            routes: list.into(),
        }
    }

    /// The route at `index` in the config.
    pub(crate) fn by_index(&self, index: usize) -> Option<&Route> {
        self.routes.iter().find(|r| r.index == index)
    }

    /// The route for a request's `Host` (port ignored, any case) and path.
    pub(crate) fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(strip_port);
        self.routes.iter().find(|r| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            host_ok && path.starts_with(r.path_prefix.as_str())
        })
    }
}

pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once(']')
            .map(|(h, _)| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn table() -> RouteTable {
        let c = Config::from_toml_str(
            r#"
[[routes]]
origin = "http://any:1"
[[routes]]
host = "api.example.com"
origin = "http://api:2"
[[routes]]
host = "api.example.com"
path_prefix = "/v2/"
origin = "http://v2:3"
[[routes]]
path_prefix = "/static/"
origin = "http://static:4"
"#,
        )
        .unwrap();
        RouteTable::new(&c.routes)
    }

    #[test]
    fn most_specific_wins() {
        let t = table();
        let cases = [
            (Some("api.example.com"), "/v2/x", "v2:3"),
            (Some("API.example.com:7999"), "/v2/x", "v2:3"),
            (Some("api.example.com"), "/v1/x", "api:2"),
            (Some("api.example.com"), "/static/a", "api:2"),
            (Some("other"), "/static/a", "static:4"),
            (Some("other"), "/x", "any:1"),
            (None, "/x", "any:1"),
            (Some("[::1]:80"), "/x", "any:1"),
        ];
        for (host, path, want) in cases {
            let r = t.lookup(host, path).unwrap();
            assert_eq!(r.authority.as_str(), want, "{host:?} {path}");
        }
    }

    #[test]
    fn no_match() {
        let c = Config::from_toml_str("[[routes]]\nhost = \"a\"\norigin = \"http://a:1\"").unwrap();
        let t = RouteTable::new(&c.routes);
        assert!(t.lookup(Some("b"), "/").is_none());
        assert!(t.lookup(None, "/").is_none());
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
