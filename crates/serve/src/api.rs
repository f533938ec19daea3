//! The routes: the page (`/`, `/app.js`, `/style.css`), `POST /api/sample`, `GET
//! /api/checkpoints`, `GET /api/metrics`; every input checked here, every refusal a 4xx (or
//! 503) with a one-line JSON body `{"error": "..."}`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State as Shared};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use karnna_infer::{
    check_temperature, check_top_n, default_prime, SampleOptions, Strategy, DEFAULT_LEN,
    DEFAULT_TEMPERATURE, DEFAULT_TOP_N,
};
use serde::Deserialize;

use crate::models::{metrics_json, Folder, Model, ModelError};
use crate::pool::{Job, Pool};

/// What every request shares.
pub(crate) struct State {
    pub folder: Arc<Folder>,
    pub pool: Pool,
    /// Bound to a loopback address: answer only requests addressed to a loopback name (a web
    /// page elsewhere cannot reach the server through a name of its own, DNS rebinding).
    pub loopback_only: bool,
    /// How long a client has to send a request's body.
    pub read_timeout: std::time::Duration,
}

/// Longest text drawn after the prime.
pub const MAX_LEN: usize = 100_000;
/// Longest prime, in characters.
pub const MAX_PRIME: usize = 10_000;
/// Largest request body: a prime of [`MAX_PRIME`] characters written as JSON escapes fits.
pub const MAX_BODY: usize = 256 * 1024;
/// Chunks of text waiting for a client (each a character or more).
const STREAM_CHUNKS: usize = 64;

const PAGE: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/style.css");

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/", get(|| asset(PAGE, "text/html; charset=utf-8")))
        .route(
            "/app.js",
            get(|| asset(SCRIPT, "text/javascript; charset=utf-8")),
        )
        .route(
            "/style.css",
            get(|| asset(STYLE, "text/css; charset=utf-8")),
        )
        .route("/api/sample", post(sample))
        .route("/api/checkpoints", get(checkpoints))
        .route("/api/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            loopback_names,
        ))
        .with_state(state)
}

/// A refusal: its status and a one-line JSON body.
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 }).to_string() + "\n";
        let mut r = (self.0, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.0 == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Unknown(_) => Self::bad(e.to_string()),
            ModelError::Empty(_) | ModelError::Load(_) => {
                Self(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

async fn asset(text: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        text,
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        format!("no such route: {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

/// Refuses a request whose `Host` is not a loopback name when the server listens on loopback.
async fn loopback_names(Shared(state): Shared<Arc<State>>, req: Request, next: Next) -> Response {
    if state.loopback_only {
        if let Some(host) = req.headers().get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            let name = match host.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => host.rsplit_once(':').map_or(host, |(n, _)| n),
            };
            let local = name.eq_ignore_ascii_case("localhost")
                || name.to_ascii_lowercase().ends_with(".localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !local {
                return ApiError(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this server listens on loopback and answers only to localhost, not to \
                         {host:?} (start it with --addr to serve other names)"
                    ),
                )
                .into_response();
            }
        }
    }
    next.run(req).await
}

/// `POST /api/sample`'s body: `karnna sample`'s flags.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleRequest {
    prime: Option<String>,
    len: Option<usize>,
    temperature: Option<f32>,
    top_n: Option<usize>,
    seed: Option<u64>,
    argmax: Option<bool>,
    checkpoint: Option<String>,
}

/// Checks a request's bounds (those that need no model): the length, the prime's, the
/// temperature, top-n.
fn check_bounds(r: &SampleRequest) -> Result<(), ApiError> {
    if let Some(len) = r.len {
        if len > MAX_LEN {
            return Err(ApiError::bad(format!(
                "len must be at most {MAX_LEN}, got {len}"
            )));
        }
    }
    if let Some(p) = &r.prime {
        let n = p.chars().count();
        if n > MAX_PRIME {
            return Err(ApiError::bad(format!(
                "prime must be at most {MAX_PRIME} characters, got {n}"
            )));
        }
        if n == 0 {
            return Err(ApiError::bad("prime is empty: give at least one character"));
        }
    }
    if let Some(t) = r.temperature {
        check_temperature(t).map_err(|e| ApiError::bad(format!("temperature {e}")))?;
    }
    if let Some(n) = r.top_n {
        check_top_n(n, None).map_err(|e| ApiError::bad(format!("top_n {e}")))?;
    }
    Ok(())
}

/// A seed for a request without one, below 2^53 so that a page's JavaScript keeps it exact.
fn fresh_seed() -> u64 {
    rand::random::<u64>() >> 11
}

/// `POST /api/sample`: checks the request, queues it on the pool, and streams the text as the
/// pool draws it (headers `x-seed` and `x-checkpoint` say what was used).
async fn sample(Shared(state): Shared<Arc<State>>, req: Request) -> Result<Response, ApiError> {
    let headers = req.headers().clone();
    // A client that sends its body slowly holds a connection, not a sampler: it has
    // `read_timeout` for the whole body.
    let body = tokio::time::timeout(state.read_timeout, Bytes::from_request(req, &()))
        .await
        .map_err(|_| {
            ApiError(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body took longer than {} s to arrive",
                    state.read_timeout.as_secs_f64()
                ),
            )
        })?;
    let req = read_request(&headers, body)?;
    let model = find_model(&state, req.checkpoint.clone()).await?;
    let opts = req.options(&model)?;
    let seed = opts.seed;
    let (tx, rx) = tokio::sync::mpsc::channel(STREAM_CHUNKS);
    let stop = Arc::new(AtomicBool::new(false));
    let checkpoint = model.name.clone();
    state
        .pool
        .submit(Job {
            model,
            opts,
            out: tx,
            stop: stop.clone(),
        })
        .map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "every sampler is busy and the queue is full: try again in a moment".into(),
            )
        })?;
    let mut response = Body::from_stream(TextStream { rx, stop }).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-seed", HeaderValue::from(seed));
    if let Ok(v) = HeaderValue::from_str(&checkpoint) {
        h.insert("x-checkpoint", v);
    }
    Ok(response)
}

/// The request in a body of JSON within bounds: 413 for a body too large, 415 unless it is
/// sent as JSON, 400 for bad JSON or values out of bounds.
fn read_request(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<SampleRequest, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError(e.status(), format!("cannot read the request body: {e}"))
        }
    })?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with content-type: application/json".into(),
        ));
    }
    let req: SampleRequest =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("bad JSON: {e}")))?;
    check_bounds(&req)?;
    Ok(req)
}

/// The model named `name` (the best one for `None`): loaded and listed a moment ago (no
/// blocking), or else read on a blocking thread.
async fn find_model(state: &State, name: Option<String>) -> Result<Arc<Model>, ApiError> {
    if let Some(m) = state.folder.model_now(name.as_deref()) {
        return Ok(m);
    }
    let folder = state.folder.clone();
    Ok(
        tokio::task::spawn_blocking(move || folder.model(name.as_deref()))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??,
    )
}

impl SampleRequest {
    /// The sampler's options for `model`, with `karnna sample`'s defaults (the sampler's
    /// [`DEFAULT_TOP_N`], [`DEFAULT_TEMPERATURE`], [`DEFAULT_LEN`]), the default prime and a
    /// fresh seed. 400 when top-n exceeds the vocabulary or the prime has characters it lacks.
    fn options(self, model: &Model) -> Result<SampleOptions, ApiError> {
        let vocab = &model.vocab;
        let strategy = if self.argmax.unwrap_or(false) {
            Strategy::Argmax
        } else {
            let n = self.top_n.unwrap_or(DEFAULT_TOP_N);
            check_top_n(n, Some(vocab.len())).map_err(|e| ApiError::bad(format!("top_n {e}")))?;
            Strategy::TopN {
                n,
                temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            }
        };
        let prime = self.prime.unwrap_or_else(|| default_prime(vocab));
        if let Err(e) = vocab.encode(&prime) {
            let chars: Vec<String> = e.0.iter().map(|c| format!("{c:?}")).collect();
            return Err(ApiError::bad(format!(
                "the prime has characters that {}'s vocabulary lacks: {}",
                model.name,
                chars.join(", ")
            )));
        }
        Ok(SampleOptions {
            prime,
            len: self.len.unwrap_or(DEFAULT_LEN),
            strategy,
            seed: self.seed.unwrap_or_else(fresh_seed),
        })
    }
}

/// The text of a sample as it is drawn. Dropped (the response done, or the client gone), it
/// raises the sample's stop flag: the pool thread stops at its next character.
struct TextStream {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    stop: Arc<AtomicBool>,
}

impl futures_core::Stream for TextStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

impl Drop for TextStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

async fn checkpoints(Shared(state): Shared<Arc<State>>) -> Result<Response, ApiError> {
    let list = match state.folder.list_recent() {
        Some(list) => list,
        None => {
            let folder = state.folder.clone();
            tokio::task::spawn_blocking(move || folder.list())
                .await
                .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??
        }
    };
    Ok(json_response(
        serde_json::to_string(&list).expect("a list serializes"),
    ))
}

fn json_response(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/metrics`: `metrics.csv` as JSON rows (`[]` while there is none), with an `ETag`
/// (the file's size and time), so that a page polling it gets 304 until the run writes more.
async fn metrics(
    Shared(state): Shared<Arc<State>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = state.folder.metrics_path();
    let seen = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<(String, String)>> {
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let time = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let tag = format!("\"{}-{time}\"", meta.len());
        if seen.as_deref() == Some(tag.as_str()) {
            return Ok(Some((tag, String::new())));
        }
        Ok(Some((tag, std::fs::read_to_string(&path)?)))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics.csv: {e}"),
        )
    })?;
    let Some((tag, text)) = read else {
        return Ok(json_response("[]".into()));
    };
    let etag = HeaderValue::from_str(&tag).expect("an ETag of digits");
    if text.is_empty() {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let mut r = json_response(metrics_json(&text).to_string());
    r.headers_mut().insert(header::ETAG, etag);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<SampleRequest, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn bounds_are_checked_before_any_model() {
        let bad = |json: &str| check_bounds(&req(json).unwrap()).err().unwrap().1;
        assert!(bad(r#"{"len": 100001}"#).contains("len must be at most 100000"));
        assert!(bad(r#"{"temperature": 0}"#).contains("temperature must be positive"));
        assert!(bad(r#"{"temperature": -1.5}"#).contains("temperature"));
        assert!(bad(r#"{"top_n": 0}"#).contains("top_n must be at least 1"));
        assert!(bad(r#"{"prime": ""}"#).contains("prime is empty"));
        let long = format!(r#"{{"prime": "{}"}}"#, "é".repeat(MAX_PRIME + 1));
        assert!(bad(&long).contains("at most 10000 characters"));
        let ok = format!(r#"{{"prime": "{}", "len": 100000}}"#, "é".repeat(MAX_PRIME));
        assert!(check_bounds(&req(&ok).unwrap()).is_ok());
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        assert!(req(r#"{"lenght": 5}"#).is_err());
        assert!(req(r#"{"len": -5}"#).is_err());
        assert!(req(r#"{"seed": "x"}"#).is_err());
        assert!(req(r#"{"checkpoint": "../x.ckpt"}"#).is_ok()); // refused by name later
    }

    #[test]
    fn fresh_seeds_fit_in_a_javascript_number() {
        assert!((0..1000).all(|_| fresh_seed() < 1 << 53));
    }
}
