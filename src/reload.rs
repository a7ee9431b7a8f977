//! Live reload (SIGHUP): the config file is read and validated again, and the reloadable settings (routes,
//! `[hold]`, `proxy.x_forwarded_*`, `proxy.upstream_sig_*`, the HTTPS certificates) are swapped in atomically for
//! new requests and handshakes. A request
//! keeps the state it started with to its end: held clients stay held under the old routes and timeouts, on the
//! same registry, and are released by publishes as before. An invalid file is rejected with a log line and the
//! running configuration stays (a certificate that cannot be loaded included). Listeners, `[control]`, `[bus]`, `[origin]`, `[last_ids]`, `[history]`, `[publish]`,
//! `[shutdown]`, `[metrics]`, `[limits]` and the other `[proxy]` limits need a restart: a reload that changes them says so and
//! leaves them as they are.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::config::{Config, ConfigError, Overrides};
use crate::proxy::ProxyState;
use crate::tls::server::Resolver;

/// Swaps the proxy state on reload. Owned by the [`crate::App`].
pub struct Reloader {
    /// The state new requests take (`load_full` per request: no lock). Shared with the client listener's handler.
    live: Arc<ArcSwap<ProxyState>>,
    /// The configuration in force: the start-up one with each reload's reloadable settings applied. A reload's
    /// restart-only settings are compared against it, so a change not applied is reported again on the next reload.
    running: Mutex<Config>,
    /// The HTTPS listeners' certificates, if any.
    certificates: Option<Arc<Resolver>>,
}

/// What a reload applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Routes now in force.
    pub routes: usize,
    /// Restart-only settings that differ in the new file and were left as they are.
    pub needs_restart: Vec<&'static str>,
}

impl Reloader {
    /// A reloader over the state new requests read.
    pub(crate) fn new(
        live: Arc<ArcSwap<ProxyState>>,
        running: Config,
        certificates: Option<Arc<Resolver>>,
    ) -> Self {
        Reloader {
            live,
            running: Mutex::new(running),
            certificates,
        }
    }

    /// Applies a validated configuration's reloadable settings. New requests use them at once; requests already
    /// in flight (held ones included) keep the state they started with.
    pub fn apply(&self, new: Config) -> Reloaded {
        let mut running = self.running.lock();
        let needs_restart = restart_only_changes(&running, &new);
        let current = self.live.load_full();
        running.routes = new.routes;
        running.hold = new.hold;
        running.x_forwarded_for = new.x_forwarded_for;
        running.x_forwarded_proto = new.x_forwarded_proto;
        running.upstream = new.upstream;
        if let (Some(resolver), Some(old), Some(new)) =
            (&self.certificates, running.tls.as_mut(), new.tls)
        {
            if old.listen == new.listen && old.certificates != new.certificates {
                resolver.swap(new.certificates.clone());
                old.certificates = new.certificates;
                tracing::info!("HTTPS certificates reloaded: new handshakes use them");
            }
        }
        // The origin client (its pool and concurrency bound), the registry and the metrics carry over.
        let state = ProxyState::build(
            &running,
            current.registry.clone(),
            current.forwarder.clone(),
            current.metrics.clone(),
            current.clients.clone(),
        );
        self.live.store(Arc::new(state));
        current.metrics.reload(true);
        Reloaded {
            routes: running.routes.len(),
            needs_restart,
        }
    }

    /// Reads the config file again (with the same command-line overrides as at start) and applies it, or keeps the
    /// running configuration if it is invalid. Logs the outcome either way.
    pub fn reload_from(
        &self,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Reloaded, ConfigError> {
        let loaded = Config::load(path, overrides);
        let config = match loaded {
            Ok(config) => config,
            Err(e) => {
                self.live.load().metrics.reload(false);
                tracing::error!(error = %e, "configuration reload rejected: the running configuration is kept");
                return Err(e);
            }
        };
        let reloaded = self.apply(config);
        if reloaded.needs_restart.is_empty() {
            tracing::info!(routes = reloaded.routes, "configuration reloaded");
        } else {
            tracing::warn!(
                routes = reloaded.routes,
                needs_restart = ?reloaded.needs_restart,
                "configuration reloaded; some changed settings need a restart and were left as they are"
            );
        }
        Ok(reloaded)
    }
}

/// The restart-only settings that differ between `old` and `new`, by config section or key. Values are compared
/// (every typed section is `PartialEq`), secrets included: keys are compared by the bytes they were built from.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let checks = [
        ("proxy.listen", old.listen != new.listen),
        ("proxy.runtime", old.runtime != new.runtime),
        ("proxy.threads", old.threads != new.threads),
        ("control.listen", old.control_listen != new.control_listen),
        (
            "control.max_body",
            old.control_max_body != new.control_max_body,
        ),
        ("control.auth", old.control_auth != new.control_auth),
        ("control.tls", old.control_tls != new.control_tls),
        ("proxy limits", old.limits != new.limits),
        ("publish", old.publish != new.publish),
        ("origin", old.origin != new.origin),
        ("last_ids", old.last_ids != new.last_ids),
        ("history", old.history != new.history),
        ("shutdown", old.shutdown_grace != new.shutdown_grace),
        ("bus", old.bus != new.bus),
        ("metrics", old.metrics_listen != new.metrics_listen),
        ("limits", old.fair_use != new.fair_use),
        (
            "tls.listen",
            old.tls.as_ref().map(|t| t.listen) != new.tls.as_ref().map(|t| t.listen),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hold::Registry;

    fn config(toml: &str) -> Config {
        Config::from_toml_str(toml).unwrap()
    }

    #[test]
    fn swaps_reloadable_settings_and_reports_the_rest() {
        let old = config("[[routes]]\norigin = \"http://127.0.0.1:1\"");
        let registry = Registry::new((&old).into());
        let live = Arc::new(ArcSwap::from_pointee(ProxyState::new(&old, registry)));
        let reloader = Reloader::new(live.clone(), old, None);
        let before = live.load_full();

        let reloaded = reloader.apply(config(
            "[hold]\ndefault_timeout_secs = 7\n[origin]\nconnect_timeout_secs = 1.0\n\
             [control]\nlisten = \"127.0.0.1:1\"\n\
             [[routes]]\norigin = \"http://127.0.0.1:2\"\n[[routes]]\npath_prefix = \"/x/\"\norigin = \"http://127.0.0.1:3\"",
        ));
        assert_eq!(reloaded.routes, 2);
        assert_eq!(reloaded.needs_restart, ["control.listen", "origin"]);
        let after = live.load_full();
        assert_eq!(after.hold.default_timeout.as_secs(), 7);
        assert_eq!(after.route_stats.len(), 2);
        assert_eq!(after.route_stats[1].label(), "*/x/");
        assert!(Arc::ptr_eq(&before.metrics, &after.metrics));
        assert_eq!(
            before.hold.default_timeout.as_secs(),
            55,
            "the old state is untouched"
        );

        // Still not applied: reported again.
        let again = reloader.apply(config(
            "[control]\nlisten = \"127.0.0.1:1\"\n[[routes]]\norigin = \"http://127.0.0.1:2\"",
        ));
        assert_eq!(again.needs_restart, ["control.listen"]);
    }

    #[test]
    fn a_changed_secret_needs_a_restart() {
        let base = config(
            "[bus]\nurl = \"redis://:old-pw@127.0.0.1:6379/0\"\n[control.auth]\nbearer_key = \"old-key\"",
        );
        assert_eq!(
            restart_only_changes(&base, &base.clone()),
            Vec::<&str>::new()
        );
        let same = config(
            "[bus]\nurl = \"redis://:old-pw@127.0.0.1:6379/0\"\n[control.auth]\nbearer_key = \"old-key\"",
        );
        assert_eq!(restart_only_changes(&base, &same), Vec::<&str>::new());
        let password = config(
            "[bus]\nurl = \"redis://:new-pw@127.0.0.1:6379/0\"\n[control.auth]\nbearer_key = \"old-key\"",
        );
        assert_eq!(
            format!("{:?}", base.bus),
            format!("{:?}", password.bus),
            "the password is not shown, yet it is compared"
        );
        assert_eq!(restart_only_changes(&base, &password), ["bus"]);
        let key = config(
            "[bus]\nurl = \"redis://:old-pw@127.0.0.1:6379/0\"\n[control.auth]\nbearer_key = \"new-key\"",
        );
        assert_eq!(restart_only_changes(&base, &key), ["control.auth"]);
    }
}
