//! The API's routes: every `/v1/` endpoint and the search page, behind the `Host` check, the body limit and the
//! bearer check.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::api::{Api, search};
use super::auth::{bearer, host_check};
use super::labels::labels;
use super::reply::failure;
use super::segments::{recent, segment, segment_audio, segment_spectrogram, spaces};

/// The `/v1/` routes and the search page, behind the `Host` check, with the body limit and, when a token is set,
/// the bearer check.
pub fn routes(api: Api) -> Router {
    let limit = api.config.api.max_body_bytes;
    let token = api.config.api.token.clone();
    let hosts = Arc::new(api.config.api.allowed_hosts.clone());
    let router = Router::new()
        .route("/v1/search", post(search))
        .route("/v1/segments", get(recent))
        .route("/v1/segments/{id}", get(segment))
        .route("/v1/segments/{id}/audio.wav", get(segment_audio))
        .route("/v1/segments/{id}/spectrogram.png", get(segment_spectrogram))
        .route("/v1/spaces", get(spaces))
        .route("/v1/labels", post(labels))
        .fallback(|| async {
            failure(
                StatusCode::NOT_FOUND,
                "no such endpoint: see /v1/search, /v1/segments, /v1/segments/{id}, /v1/segments/{id}/audio.wav, \
                 /v1/segments/{id}/spectrogram.png, /v1/spaces, /v1/labels",
            )
        })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(api);
    let router = match token {
        Some(token) => router.layer(middleware::from_fn_with_state(Arc::new(token), bearer)),
        None => router,
    };
    // The search page holds no data (it asks the API, with the token when one is set), so it needs none.
    let router = router.route("/", get(page)).route("/search", get(page));
    // Outermost, so that a request for a foreign host learns nothing, not even whether a token is needed.
    router.layer(middleware::from_fn_with_state(hosts, host_check))
}

/// The search page: pick or upload a clip, see and hear its neighbours, label them.
async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("search.html")).into_response()
}
