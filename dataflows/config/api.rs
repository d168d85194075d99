//! `[api]`: the query API's limits, cache and access, and their validation.

use chorus_operators::FieldError;
use serde::Deserialize;

/// `[api]`: the query API's limits, cache and access.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest request body (a WAV clip), in bytes.
    pub max_body_bytes: usize,
    /// Answers kept in the LRU cache (0: no cache).
    pub cache_entries: usize,
    /// When set, `/v1/` requests need `Authorization: Bearer <token>`. `env:NAME` reads it from variable NAME.
    pub token: String,
    /// The p99 search latency `chorus bench-query` holds the API to, in milliseconds.
    pub sla_p99_ms: f64,
    /// Host names (no port) the API and the search page answer to besides IP addresses and `localhost`: the names
    /// people or a proxy reach this server by. A request for any other `Host` is refused (421), so a web page cannot
    /// reach the API through a DNS name it points at this machine (DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Longest WAV clip a search takes, in seconds (1..=3600): a longer one is refused (413) from its WAV header,
    /// before its samples are decoded, since embedding every window of it holds the model for long.
    pub max_clip_seconds: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 16 << 20,
            cache_entries: 1_024,
            token: String::new(),
            sla_p99_ms: 50.0,
            allowed_hosts: Vec::new(),
            max_clip_seconds: 60,
        }
    }
}

/// Validated API settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiSettings {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// LRU capacity.
    pub cache_entries: usize,
    /// Bearer token, if one is required.
    pub token: Option<String>,
    /// p99 target.
    pub sla_p99_ms: f64,
    /// Host names answered besides IP addresses and `localhost`: lower case, without a trailing dot.
    pub allowed_hosts: Vec<String>,
    /// Longest WAV clip a search takes, in seconds.
    pub max_clip_seconds: u32,
}

impl ApiConfig {
    /// Validates; resolves `env:NAME` tokens.
    pub fn build(&self) -> Result<ApiSettings, FieldError> {
        if !(1_024..=1 << 30).contains(&self.max_body_bytes) {
            return Err(FieldError::new(
                "max_body_bytes",
                format!("{} is outside 1024..=1073741824", self.max_body_bytes),
            ));
        }
        let token = match self.token.strip_prefix("env:") {
            Some(name) => Some(std::env::var(name).map_err(|_| {
                FieldError::new("token", format!("names environment variable {name}, which is not set"))
            })?),
            None if self.token.is_empty() => None,
            None => Some(self.token.clone()),
        };
        if token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(FieldError::new("token", "is shorter than 16 characters"));
        }
        if !(self.sla_p99_ms > 0.0 && self.sla_p99_ms.is_finite()) {
            return Err(FieldError::new(
                "sla_p99_ms",
                format!("{} is not a positive number of milliseconds", self.sla_p99_ms),
            ));
        }
        let mut allowed_hosts = Vec::with_capacity(self.allowed_hosts.len());
        for (i, host) in self.allowed_hosts.iter().enumerate() {
            let wrong = |why: &str| FieldError::new("allowed_hosts", format!("entry {i} '{host}' {why}"));
            if host.is_empty() {
                return Err(wrong("is empty: give a host name such as chorus.example.org"));
            }
            if host.contains('/') {
                return Err(wrong(
                    "is not a bare host name: give the name alone, not a URL or path (chorus.example.org)",
                ));
            }
            if host.contains(':') || host.contains('[') {
                return Err(wrong(
                    "has a port or is an IPv6 address: give the host name alone (every port is answered, and IP \
                     addresses always are)",
                ));
            }
            let name = normal_host(host);
            let label_ok = |label: &str| {
                (1..=63).contains(&label.len())
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if name.len() > 253 || !name.split('.').all(label_ok) {
                return Err(wrong("is not a host name (labels of letters, digits and '-', joined by '.')"));
            }
            allowed_hosts.push(name);
        }
        if !(1..=3_600).contains(&self.max_clip_seconds) {
            return Err(FieldError::new(
                "max_clip_seconds",
                format!("{} is outside 1..=3600 seconds", self.max_clip_seconds),
            ));
        }
        Ok(ApiSettings {
            max_body_bytes: self.max_body_bytes,
            cache_entries: self.cache_entries,
            token,
            sla_p99_ms: self.sla_p99_ms,
            allowed_hosts,
            max_clip_seconds: self.max_clip_seconds,
        })
    }
}

/// A host name as compared: DNS names are case-insensitive, and `name.` is the same name as `name`.
pub(crate) fn normal_host(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_config_resolves_and_checks_its_token() {
        assert_eq!(ApiConfig::default().build().unwrap().token, None);
        let short = ApiConfig { token: "secret".into(), ..Default::default() };
        assert_eq!(short.build().unwrap_err().field, "token");
        let missing = ApiConfig { token: "env:CHORUS_TEST_TOKEN_THAT_IS_NOT_SET".into(), ..Default::default() };
        assert!(missing.build().unwrap_err().message.contains("CHORUS_TEST_TOKEN_THAT_IS_NOT_SET"));
    }

    #[test]
    fn r13_api_config_checks_allowed_hosts_and_max_clip_seconds() {
        let defaults = ApiConfig::default().build().unwrap();
        assert_eq!((defaults.allowed_hosts, defaults.max_clip_seconds), (Vec::<String>::new(), 60));
        let hosts = |list: &[&str]| ApiConfig {
            allowed_hosts: list.iter().map(|h| (*h).to_owned()).collect(),
            ..Default::default()
        };
        let built = hosts(&["Chorus.Example.Org.", "birds-1", "a_b.local"]).build().unwrap();
        assert_eq!(built.allowed_hosts, ["chorus.example.org", "birds-1", "a_b.local"]);
        for bad in
            ["", "chorus.example.org:9464", "https://chorus.example.org/", "chorus/x", "[::1]", "a b", "a..b", "."]
        {
            let error = hosts(&["ok.example", bad]).build().unwrap_err();
            assert_eq!(error.field, "allowed_hosts", "{bad}");
            assert!(error.message.starts_with(&format!("entry 1 '{bad}' ")), "{bad}: {}", error.message);
        }
        for (seconds, ok) in [(0, false), (1, true), (3_600, true), (3_601, false)] {
            let built = ApiConfig { max_clip_seconds: seconds, ..Default::default() }.build();
            assert_eq!(built.is_ok(), ok, "{seconds}");
            if let Err(error) = built {
                assert_eq!(error.field, "max_clip_seconds");
            }
        }
    }
}
