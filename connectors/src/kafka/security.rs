//! How chorus's Kafka clients reach a production cluster: the security protocol, SASL credentials, TLS files, and
//! the `[kafka.properties]` passed to librdkafka as they are. Secrets are held in [`Secret`], which no `Debug` or
//! `Display` shows, and are handed to librdkafka only.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use chorus_operators::FieldError;
use rdkafka::config::ClientConfig;
use serde::Deserialize;

/// A password or key password (as written, possibly `env:NAME`, or resolved): shown as `***`, handed only to
/// librdkafka.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Whether nothing was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret itself, for the client that needs it.
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A value of `[kafka.properties]`: librdkafka takes every property as text. A name written without quotes
/// (`client.id = "x"`) is a table to TOML (`client`, holding `id`); it stands for the dotted name all the same.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Property {
    /// `"…"`.
    Text(String),
    /// A whole number.
    Integer(i64),
    /// A number with a fraction.
    Float(f64),
    /// `true` or `false`.
    Flag(bool),
    /// The rest of a dotted name written without quotes.
    Table(BTreeMap<String, Property>),
}

impl Property {
    /// Every `(name, value)` this value stands for under `name`: itself, or a table's entries with dotted names.
    fn flatten(&self, name: &str, out: &mut Vec<(String, String)>) {
        let text = match self {
            Property::Text(s) => s.clone(),
            Property::Integer(n) => n.to_string(),
            Property::Float(x) => x.to_string(),
            Property::Flag(b) => b.to_string(),
            Property::Table(entries) => {
                for (key, value) in entries {
                    value.flatten(&format!("{name}.{key}"), out);
                }
                return;
            }
        };
        out.push((name.to_owned(), text));
    }
}

/// Properties chorus sets itself, and why a config may not: each is refused in `[kafka.properties]` naming the
/// reason. Prefix entries end with a dot.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.brokers"),
    ("group.id", "set kafka.group_id; the job commits its offsets under it and never joins the group"),
    ("enable.auto.commit", "chorus commits offsets only once what was derived from them is durable"),
    ("enable.auto.offset.store", "chorus stores offsets itself, behind its sinks"),
    ("auto.offset.reset", "chorus reads from its committed offsets, or from the oldest message kept"),
    ("enable.partition.eof", "chorus needs the end of each partition to know when held-back audio can go"),
    ("isolation.level", "chorus reads what its own transactions-free producers commit"),
    ("enable.idempotence", "chorus's producer sets it"),
    ("acks", "chorus's producer waits for every replica"),
    ("compression.type", "set kafka.compression"),
    ("compression.codec", "set kafka.compression"),
    ("message.max.bytes", "set kafka.max_message_bytes"),
    ("fetch.wait.max.ms", "set kafka.fetch_wait_ms"),
    ("fetch.max.bytes", "chorus sizes fetches from its memory budget"),
    ("max.partition.fetch.bytes", "chorus sizes fetches from its memory budget"),
    ("queued.max.messages.kbytes", "chorus sizes the consumer's queue from its memory budget"),
    ("security.protocol", "set kafka.security_protocol"),
    ("sasl.mechanism", "set kafka.sasl_mechanism"),
    ("sasl.mechanisms", "set kafka.sasl_mechanism"),
    ("sasl.username", "set kafka.username"),
    ("sasl.password", "set kafka.password (env:NAME keeps it out of the file)"),
    ("ssl.ca.location", "set kafka.ssl_ca_location"),
    ("ssl.certificate.location", "set kafka.ssl_certificate_location"),
    ("ssl.key.location", "set kafka.ssl_key_location"),
    ("ssl.key.password", "set kafka.ssl_key_password (env:NAME keeps it out of the file)"),
    ("ssl.key.pem", "give the key as a file, kafka.ssl_key_location"),
    ("ssl.certificate.pem", "give the certificate as a file, kafka.ssl_certificate_location"),
    ("ssl.ca.pem", "give the CA as a file, kafka.ssl_ca_location"),
    ("log_level", "chorus logs the client's warnings through its own log"),
];

/// The security part of `[kafka]`, as written: the fields of the same names there, which document them.
#[derive(Clone, Debug, Default)]
#[allow(missing_docs)]
pub struct SecurityConfig {
    pub security_protocol: String,
    pub sasl_mechanism: String,
    pub username: String,
    pub password: Secret,
    pub ssl_ca_location: PathBuf,
    pub ssl_certificate_location: PathBuf,
    pub ssl_key_location: PathBuf,
    pub ssl_key_password: Secret,
    pub properties: BTreeMap<String, Property>,
}

/// How the clients connect, validated.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Security {
    /// librdkafka's `security.protocol`.
    pub protocol: &'static str,
    /// SASL mechanism, user and password.
    pub sasl: Option<(String, String, Secret)>,
    /// CA file, client certificate and key files, and the key's password.
    pub ssl_ca: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// The client key's password.
    pub ssl_key_password: Option<Secret>,
    /// `[kafka.properties]`, as text.
    pub properties: BTreeMap<String, String>,
}

/// A secret as written: itself, or `env:NAME`.
fn secret(field: &'static str, written: &Secret) -> Result<Option<Secret>, FieldError> {
    let written = written.expose();
    match written.strip_prefix("env:") {
        Some(name) => std::env::var(name)
            .map(|value| Some(Secret(value)))
            .map_err(|_| FieldError::new(field, format!("names environment variable {name}, which is not set"))),
        None if written.is_empty() => Ok(None),
        None => Ok(Some(Secret(written.to_owned()))),
    }
}

impl SecurityConfig {
    /// Validates; relative file paths are resolved against `base`, and must exist.
    pub fn build(&self, base: &Path) -> Result<Security, FieldError> {
        let protocol = match self.security_protocol.to_ascii_lowercase().as_str() {
            "" | "plaintext" => "plaintext",
            "ssl" => "ssl",
            "sasl_plaintext" => "sasl_plaintext",
            "sasl_ssl" => "sasl_ssl",
            other => {
                return Err(FieldError::new(
                    "security_protocol",
                    format!("'{other}' is not one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
                ));
            }
        };
        let sasl = if protocol.starts_with("sasl_") {
            let mechanism = match self.sasl_mechanism.to_ascii_uppercase().as_str() {
                "" => {
                    return Err(FieldError::new(
                        "sasl_mechanism",
                        format!("is needed with security_protocol = {protocol}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
                    ));
                }
                m @ ("PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") => m.to_owned(),
                other => {
                    return Err(FieldError::new(
                        "sasl_mechanism",
                        format!("'{other}' is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
                    ));
                }
            };
            if self.username.is_empty() {
                return Err(FieldError::new("username", format!("is needed with security_protocol = {protocol}")));
            }
            let password = secret("password", &self.password)?
                .ok_or_else(|| FieldError::new("password", format!("is needed with security_protocol = {protocol}")))?;
            Some((mechanism, self.username.clone(), password))
        } else {
            for (field, set) in [
                ("sasl_mechanism", !self.sasl_mechanism.is_empty()),
                ("username", !self.username.is_empty()),
                ("password", !self.password.is_empty()),
            ] {
                if set {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "is set, but security_protocol = {protocol} does not use SASL (sasl_plaintext or sasl_ssl does)"
                        ),
                    ));
                }
            }
            None
        };
        let tls = protocol == "ssl" || protocol == "sasl_ssl";
        let file = |field: &'static str, path: &Path| -> Result<Option<PathBuf>, FieldError> {
            if path.as_os_str().is_empty() {
                return Ok(None);
            }
            if !tls {
                return Err(FieldError::new(
                    field,
                    format!("is set, but security_protocol = {protocol} does not use TLS (ssl or sasl_ssl does)"),
                ));
            }
            let path = base.join(path);
            if !path.is_file() {
                return Err(FieldError::new(field, format!("{} is not a file", path.display())));
            }
            Ok(Some(path))
        };
        let ssl_ca = file("ssl_ca_location", &self.ssl_ca_location)?;
        let certificate = file("ssl_certificate_location", &self.ssl_certificate_location)?;
        let key = file("ssl_key_location", &self.ssl_key_location)?;
        let client_certificate = match (certificate, key) {
            (Some(certificate), Some(key)) => Some((certificate, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(FieldError::new("ssl_key_location", "is needed with ssl_certificate_location"));
            }
            (None, Some(_)) => {
                return Err(FieldError::new("ssl_certificate_location", "is needed with ssl_key_location"));
            }
        };
        let ssl_key_password = secret("ssl_key_password", &self.ssl_key_password)?;
        if ssl_key_password.is_some() && client_certificate.is_none() {
            return Err(FieldError::new("ssl_key_password", "is set without ssl_key_location"));
        }
        let mut flat = Vec::new();
        for (key, value) in &self.properties {
            value.flatten(key, &mut flat);
        }
        let mut properties = BTreeMap::new();
        for (key, value) in flat {
            if let Some((_, why)) = OWNED.iter().find(|(owned, _)| key == *owned) {
                return Err(FieldError::new("properties", format!("'{key}' is chorus's own: {why}")));
            }
            if key.starts_with("sasl.") || key.starts_with("ssl.") {
                return Err(FieldError::new(
                    "properties",
                    format!("'{key}' may carry a secret: chorus sets security through the [kafka] fields"),
                ));
            }
            properties.insert(key, value);
        }
        Ok(Security { protocol, sasl, ssl_ca, client_certificate, ssl_key_password, properties })
    }
}

impl Security {
    /// Sets these on a client's config.
    pub(super) fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config.set("security.protocol", self.protocol);
        if let Some((mechanism, username, password)) = &self.sasl {
            config
                .set("sasl.mechanism", mechanism)
                .set("sasl.username", username)
                .set("sasl.password", password.expose());
        }
        if let Some(ca) = &self.ssl_ca {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        if let Some((certificate, key)) = &self.client_certificate {
            config
                .set("ssl.certificate.location", certificate.display().to_string())
                .set("ssl.key.location", key.display().to_string());
        }
        if let Some(password) = &self.ssl_key_password {
            config.set("ssl.key.password", password.expose());
        }
    }

    /// What the clients connect with, for messages: the protocol and, with SASL, the mechanism and user (never the
    /// password).
    pub fn describe(&self) -> String {
        match &self.sasl {
            Some((mechanism, username, _)) => format!("{} ({mechanism} as {username})", self.protocol),
            None => self.protocol.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Security, FieldError> {
        let config: SecurityConfig = toml_like(text);
        config.build(Path::new("/"))
    }

    /// A `SecurityConfig` from `key = "value"` lines (the connectors crate has no TOML parser).
    fn toml_like(text: &str) -> SecurityConfig {
        let mut config = SecurityConfig::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once('=').unwrap();
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim() {
                "security_protocol" => config.security_protocol = value,
                "sasl_mechanism" => config.sasl_mechanism = value,
                "username" => config.username = value,
                "password" => config.password = Secret(value),
                "ssl_ca_location" => config.ssl_ca_location = value.into(),
                property => {
                    config.properties.insert(property.to_owned(), Property::Text(value));
                }
            }
        }
        config
    }

    #[test]
    fn r21_a_sasl_protocol_needs_a_mechanism_a_user_and_a_password_each_named() {
        let error = parse("security_protocol = \"sasl_ssl\"").unwrap_err();
        assert_eq!(error.field, "sasl_mechanism");
        let error = parse("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"").unwrap_err();
        assert_eq!(error.field, "username");
        let error = parse("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nusername = \"u\"")
            .unwrap_err();
        assert_eq!(error.field, "password");
        let error = parse("security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"GSSAPI\"").unwrap_err();
        assert!(error.message.contains("'GSSAPI' is not one of"), "{}", error.message);
        let error = parse("security_protocol = \"tls\"").unwrap_err();
        assert_eq!(error.field, "security_protocol");
        // Credentials without a SASL protocol are a mistake, not ignored.
        let error = parse("username = \"u\"").unwrap_err();
        assert!(error.message.contains("does not use SASL"), "{}", error.message);
        let error = parse("ssl_ca_location = \"/etc/hostname\"").unwrap_err();
        assert!(error.message.contains("does not use TLS"), "{}", error.message);
    }

    #[test]
    fn r21_passwords_come_from_the_environment_and_never_show() {
        let name = format!("CHORUS_TEST_KAFKA_PASSWORD_{}", std::process::id());
        let security = parse(&format!(
            "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"env:{name}\""
        ));
        let error = security.unwrap_err();
        assert!(error.message.contains(&format!("names environment variable {name}, which is not set")));
        let security = parse(
            "security_protocol = \"sasl_plaintext\"\nsasl_mechanism = \"plain\"\nusername = \"u\"\npassword = \"hunter2-secret\"",
        )
        .unwrap();
        let shown = format!("{security:?} {}", security.describe());
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert_eq!(security.describe(), "sasl_plaintext (PLAIN as u)");
        let mut config = ClientConfig::new();
        security.apply(&mut config);
        assert_eq!(config.get("sasl.password"), Some("hunter2-secret"));
    }

    #[test]
    fn r21_properties_pass_through_and_chorus_own_ones_are_refused_with_the_reason() {
        let security = parse("client.id = \"pole-station\"\nsocket.keepalive.enable = \"true\"").unwrap();
        let mut config = ClientConfig::new();
        security.apply(&mut config);
        assert_eq!(
            (config.get("client.id"), config.get("socket.keepalive.enable")),
            (Some("pole-station"), Some("true"))
        );
        // A name without quotes is a table to TOML: it stands for the dotted name, and is refused the same way.
        let nested = |outer: &str, inner: &str, value: &str| SecurityConfig {
            properties: BTreeMap::from([(
                outer.to_owned(),
                Property::Table(BTreeMap::from([(inner.to_owned(), Property::Text(value.to_owned()))])),
            )]),
            ..Default::default()
        };
        let security = nested("client", "id", "pole-station").build(Path::new("/")).unwrap();
        assert_eq!(security.properties.get("client.id").map(String::as_str), Some("pole-station"));
        let error = nested("group", "id", "other").build(Path::new("/")).unwrap_err();
        assert!(error.message.contains("'group.id' is chorus's own"), "{}", error.message);
        for (key, reason) in [
            ("enable.auto.commit", "only once what was derived from them is durable"),
            ("group.id", "set kafka.group_id"),
            ("isolation.level", "chorus reads"),
            ("enable.partition.eof", "held-back audio"),
            ("sasl.password", "env:NAME"),
            ("sasl.kerberos.keytab", "may carry a secret"),
        ] {
            let error = parse(&format!("{key} = \"x\"")).unwrap_err();
            assert_eq!(error.field, "properties");
            assert!(error.message.contains(key) && error.message.contains(reason), "{key}: {}", error.message);
        }
    }
}
