//! What the API's handlers share: JSON refusals (`{"error": {"status": 400, "reason": "..."}}`) and the kind of a
//! request body, told by its content type.

use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Error;

/// A JSON error response.
pub(super) fn failure(status: StatusCode, reason: impl Into<String>) -> Response {
    let reason = reason.into();
    (status, axum::Json(json!({ "error": { "status": status.as_u16(), "reason": reason } }))).into_response()
}

/// Why a request fails, as a status and a reason.
pub(super) struct Refusal(pub(super) StatusCode, pub(super) String);

impl From<Error> for Refusal {
    fn from(error: Error) -> Refusal {
        let status = match &error {
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Usage(_) | Error::Input { .. } | Error::Operator(chorus_operators::Error::Vector(_)) => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Refusal(status, error.to_string())
    }
}

pub(super) fn bad(reason: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, reason.into())
}

/// The JSON error for a query string that does not parse, naming the field (`options` lists those there are).
pub(super) fn query_failure(rejection: &QueryRejection, options: &str) -> Response {
    let text = rejection.body_text();
    let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text);
    failure(StatusCode::BAD_REQUEST, format!("the query string does not parse: {detail} (options: {options})"))
}

#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// `application/json`.
    Json,
    /// A WAV file.
    Wav,
}

/// What a body is, from its content type; otherwise what was sent instead, for the refusal. A body without a
/// content type is not taken for JSON: a page on any site can send one (a Blob in a no-cors fetch) without the
/// browser asking this server first, whereas `application/json` or `audio/wav` makes the browser ask (CORS), and
/// this server never says yes.
pub(super) fn content_kind(headers: &HeaderMap) -> Result<Kind, String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err("the request has no content type".into());
    };
    let content_type = String::from_utf8_lossy(value.as_bytes());
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Kind::Json),
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Ok(Kind::Wav),
        _ => Err(format!("content type '{content_type}' is not taken")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r13_json_bodies_need_their_content_type_said() {
        let headers = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            }
            headers
        };
        assert!(matches!(content_kind(&headers(Some("application/json"))), Ok(Kind::Json)));
        assert!(matches!(content_kind(&headers(Some("Application/JSON; charset=utf-8"))), Ok(Kind::Json)));
        assert!(matches!(content_kind(&headers(Some("audio/x-wav"))), Ok(Kind::Wav)));
        assert_eq!(content_kind(&headers(None)).err().as_deref(), Some("the request has no content type"));
        assert_eq!(
            content_kind(&headers(Some("text/plain"))).err().as_deref(),
            Some("content type 'text/plain' is not taken")
        );
    }
}
