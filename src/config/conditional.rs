//! `[routes.conditional]`: long-poll for an origin that speaks no GRIP. A conditional `GET`/`HEAD` answered `304`
//! is held on a channel named by a template over the request; optional coalesced re-checks of the origin.

use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, secs};
use super::ConfigError;

/// `[routes.conditional]` as written. Its presence turns conditional holds on for the route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConditional {
    /// The channel a held request waits on: text with `{host}`, `{path}` and `{query}` in it.
    pub channel: String,
    /// How long a conditional request is held before the origin's `304` answers it.
    pub timeout_secs: f64,
    /// Seconds between re-checks of held requests with the origin (coalesced); 0: no re-checks.
    pub recheck_secs: f64,
}

impl Default for RawConditional {
    fn default() -> Self {
        RawConditional {
            channel: "{path}".into(),
            timeout_secs: 55.0,
            recheck_secs: 0.0,
        }
    }
}

/// Validated `[routes.conditional]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionalConfig {
    /// The channel name's template.
    pub channel: ChannelTemplate,
    /// How long a request is held.
    pub timeout: Duration,
    /// Interval of re-checks, if on.
    pub recheck: Option<Duration>,
}

/// Shortest re-check interval: shorter would make the proxy a load generator against its own origin.
pub const MIN_RECHECK: Duration = Duration::from_millis(100);

/// A channel name template: literal text and placeholders, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTemplate(Vec<Part>);

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    /// The request's host, lower-case, without its port.
    Host,
    /// The request's path (normalised, as routed).
    Path,
    /// The request's query, without `?` (empty when there is none).
    Query,
}

impl ChannelTemplate {
    /// Parses `{host}`, `{path}` and `{query}` in `text`; `{{` and `}}` stand for braces.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("{{") {
                literal.push('{');
                rest = after;
            } else if let Some(after) = rest.strip_prefix("}}") {
                literal.push('}');
                rest = after;
            } else if c == '{' {
                let end = rest
                    .find('}')
                    .ok_or_else(|| format!("{text:?}: a {{ is not closed"))?;
                let part = match &rest[1..end] {
                    "host" => Part::Host,
                    "path" => Part::Path,
                    "query" => Part::Query,
                    other => {
                        return Err(format!(
                            "{text:?}: unknown placeholder {{{other}}} (expected {{host}}, {{path}} or {{query}})"
                        ))
                    }
                };
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(part);
                rest = &rest[end + 1..];
            } else if c == '}' {
                return Err(format!(
                    "{text:?}: a }} without its {{ (write }}}} for a brace)"
                ));
            } else {
                literal.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        if !parts.iter().any(|p| !matches!(p, Part::Text(_))) {
            return Err(format!(
                "{text:?}: names one channel for every request; use {{path}} (and {{host}}, {{query}})"
            ));
        }
        Ok(ChannelTemplate(parts))
    }

    /// The channel of a request to `host` (without its port; lower-cased here) for `path` and `query`.
    pub fn expand(&self, host: &str, path: &str, query: &str) -> String {
        let mut out = String::with_capacity(host.len() + path.len() + query.len() + 16);
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Host => out.extend(host.chars().map(|c| c.to_ascii_lowercase())),
                Part::Path => out.push_str(path),
                Part::Query => out.push_str(query),
            }
        }
        out
    }
}

/// Validates route `i`'s `[routes.conditional]`.
pub(super) fn validate(i: usize, c: &RawConditional) -> Result<ConditionalConfig, ConfigError> {
    let key = |k: &str| format!("routes[{i}].conditional.{k}");
    let channel = ChannelTemplate::parse(&c.channel).map_err(|e| invalid(key("channel"), e))?;
    let timeout = secs(&key("timeout_secs"), c.timeout_secs)?;
    let recheck = if c.recheck_secs == 0.0 {
        None
    } else {
        let every = secs(&key("recheck_secs"), c.recheck_secs)?;
        if every < MIN_RECHECK {
            return Err(invalid(
                key("recheck_secs"),
                format!(
                    "{} is below the shortest interval, 0.1 (or 0 for no re-checks)",
                    c.recheck_secs
                ),
            ));
        }
        Some(every)
    };
    Ok(ConditionalConfig {
        channel,
        timeout,
        recheck,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn templates_expand_and_bad_ones_are_named() {
        let t = ChannelTemplate::parse("api:{host}{path}?{query}").unwrap();
        assert_eq!(
            t.expand("Example.COM", "/items/1", "a=1"),
            "api:example.com/items/1?a=1"
        );
        let braces = ChannelTemplate::parse("{{x}}{path}").unwrap();
        assert_eq!(braces.expand("h", "/p", ""), "{x}/p");
        for (bad, says) in [
            ("{paths}", "unknown placeholder {paths}"),
            ("{path", "is not closed"),
            ("x}{path}", "without its {"),
            ("fixed", "names one channel for every request"),
        ] {
            let e = ChannelTemplate::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_table_turns_it_on_and_its_keys_are_checked() {
        let base = "[[routes]]\norigin = \"http://127.0.0.1:1\"\n";
        let c = Config::from_toml_str(base).unwrap();
        assert_eq!(c.routes[0].conditional, None, "off without the table");
        let c = Config::from_toml_str(&format!("{base}[routes.conditional]\n")).unwrap();
        let on = c.routes[0].conditional.as_deref().unwrap();
        assert_eq!(on.timeout, Duration::from_secs(55));
        assert_eq!(on.recheck, None);
        assert_eq!(on.channel.expand("h", "/v", ""), "/v");
        let c = Config::from_toml_str(&format!(
            "{base}[routes.conditional]\nchannel = \"{{host}}{{path}}\"\ntimeout_secs = 20\nrecheck_secs = 1.5"
        ))
        .unwrap();
        let on = c.routes[0].conditional.as_deref().unwrap();
        assert_eq!(on.recheck, Some(Duration::from_millis(1500)));
        // The shortest interval: at it, and just above, accepted; just below, refused.
        for (secs, ok) in [(0.1, true), (0.11, true), (0.099, false)] {
            let c = Config::from_toml_str(&format!(
                "{base}[routes.conditional]\nrecheck_secs = {secs}"
            ));
            assert_eq!(c.is_ok(), ok, "recheck_secs = {secs}");
        }
        for (toml, says) in [
            (
                "recheck_secs = 0.05",
                "routes[0].conditional.recheck_secs: 0.05 is below",
            ),
            ("timeout_secs = 0", "routes[0].conditional.timeout_secs"),
            ("channel = \"{nope}\"", "routes[0].conditional.channel"),
            ("every = 1", "unknown field"),
        ] {
            let e = Config::from_toml_str(&format!("{base}[routes.conditional]\n{toml}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{toml}: {e}");
        }
    }
}
