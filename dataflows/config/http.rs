//! `[http]`: where the health and metrics endpoints and the query API listen.

use std::net::SocketAddr;

use chorus_operators::FieldError;
use serde::Deserialize;

/// `[http]`: where the job serves its health and metrics endpoints.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoints at all.
    pub enabled: bool,
    /// Address to listen on (`127.0.0.1` keeps them local; port 0 picks a free port, which is logged).
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { enabled: true, listen: "127.0.0.1:9464".into() }
    }
}

impl HttpConfig {
    /// Validates.
    pub fn build(&self) -> Result<Option<SocketAddr>, FieldError> {
        if !self.enabled {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            FieldError::new("listen", format!("'{}' is not an address such as 127.0.0.1:9464", self.listen))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_listens_on_this_machine_only_unless_told_otherwise() {
        let listen = HttpConfig::default().build().unwrap().unwrap();
        assert!(listen.ip().is_loopback(), "{listen}");
    }
}
