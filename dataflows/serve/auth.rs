//! Who the API answers: requests for an IP address, `localhost` or a name in `api.allowed_hosts` (against DNS
//! rebinding), and, with `api.token` set, requests bearing the token.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::reply::failure;
use crate::config::api::normal_host;

/// The host of an authority (`host[:port]`, as in a `Host` header), or `None` when it is not one. An IPv6 address
/// keeps its brackets.
fn host_part(authority: &str) -> Option<&str> {
    let end = if authority.starts_with('[') {
        authority.find(']')? + 1
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    let (host, port) = authority.split_at(end);
    let port_ok = port.is_empty() || port.strip_prefix(':').is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    (port_ok && !host.is_empty()).then_some(host)
}

/// Whether the API answers to `authority` (a `Host` header's value): an IP address (IPv6 in brackets), `localhost`,
/// or a name in `allowed` (normalised as by [`normal_host`]). A DNS rebinding attack needs a name of the attacker's
/// own, which is none of these.
fn host_allowed(authority: &str, allowed: &[String]) -> bool {
    let Some(host) = host_part(authority) else { return false };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    if host.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = normal_host(host);
    name == "localhost" || allowed.contains(&name)
}

/// Refuses (421) a request for a host the API does not answer to (see [`host_allowed`]), and (400) one that names
/// no host or more than one.
pub(super) async fn host_check(State(allowed): State<Arc<Vec<String>>>, request: HttpRequest, next: Next) -> Response {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    // In absolute form (`GET http://name/ HTTP/1.1`) the target names the host and the Host header is ignored
    // (RFC 9112, section 3.2.2).
    let authority = match (request.uri().authority(), first, second) {
        (Some(authority), _, _) => authority.as_str().to_owned(),
        (None, Some(_), Some(_)) => {
            return failure(StatusCode::BAD_REQUEST, "the request has more than one Host header; send one");
        }
        (None, Some(value), None) => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        (None, None, _) => {
            return failure(
                StatusCode::BAD_REQUEST,
                "the request has no Host header: send one (every HTTP/1.1 client does); the API answers only to IP \
                 addresses, localhost and the names in api.allowed_hosts",
            );
        }
    };
    if host_allowed(&authority, &allowed) {
        return next.run(request).await;
    }
    let host = host_part(&authority).unwrap_or(&authority);
    failure(
        StatusCode::MISDIRECTED_REQUEST,
        format!(
            "this server does not answer to host '{host}': to reach it by that name, add \"{host}\" to \
             api.allowed_hosts (IP addresses and localhost are always answered)"
        ),
    )
}

/// The token of an `Authorization` header of the Bearer scheme, whose name is case-insensitive (RFC 7235); the
/// token is taken as sent.
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("Bearer").then(|| token.trim_start_matches(' '))
}

pub(super) async fn bearer(State(token): State<Arc<String>>, request: HttpRequest, next: Next) -> Response {
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match given {
        Some(given) if equal_in_constant_time(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => failure(StatusCode::UNAUTHORIZED, "the bearer token is wrong"),
        None => failure(StatusCode::UNAUTHORIZED, "this API needs an `Authorization: Bearer <token>` header"),
    }
}

fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(equal_in_constant_time(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!equal_in_constant_time(b"0123456789abcdef", b"0123456789abcdeF"));
        assert!(!equal_in_constant_time(b"0123456789abcdef", b"0123456789abcde"));
    }

    #[test]
    fn r13_hosts_answered_are_ip_addresses_localhost_and_the_allowed_names() {
        let allowed = vec!["chorus.example.org".to_owned()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:9464",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9464",
            "[2001:db8::7]:8080",
            "localhost",
            "LOCALHOST:9464",
            "localhost.:9464",
            "chorus.example.org",
            "Chorus.Example.Org:443",
            "chorus.example.org.",
            "localhost:",
        ] {
            assert!(host_allowed(host, &allowed), "{host}");
        }
        for host in [
            "",
            ":9464",
            "evil.example",
            "evil.example:9464",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "chorus.example.org.evil.example",
            "example.org",
            "::1",
            "[::1",
            "[::1]x",
            "[localhost]",
            "[127.0.0.1]",
            "127.1",
            "localhost:http",
            "localhost:80:80",
            "user@localhost",
            "localhost/",
        ] {
            assert!(!host_allowed(host, &allowed), "{host}");
        }
        assert!(!host_allowed("chorus.example.org", &[]));
        assert_eq!(host_part("[::1]:9464"), Some("[::1]"));
        assert_eq!(host_part("evil.example:9464"), Some("evil.example"));
        assert_eq!(host_part("evil.example:port"), None);
    }

    #[test]
    fn r13_the_bearer_scheme_is_any_case_and_the_token_as_sent() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer   abc"), Some("abc"));
        assert_eq!(bearer_token("Bearer aBc"), Some("aBc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearerabc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearers abc"), None);
    }
}
