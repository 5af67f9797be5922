//! Reading JSON request bodies: content type, size limit and parsing, each with its
//! own clear error. Handlers take the raw bytes too, for idempotency hashing.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::problem::ApiError;

/// Reads the body up to `limit` bytes, within `timeout` (a client that declares a body
/// and never sends it does not hold a connection forever).
///
/// # Errors
/// [`ApiError::RequestTimeout`] when the body does not arrive in time;
/// [`ApiError::PayloadTooLarge`] past the limit (checked against `Content-Length`
/// first, so a huge upload is refused before it is read), [`ApiError::InvalidJson`]
/// when the upload breaks off.
pub async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(timeout, read_limited(req, payload, limit))
        .await
        .map_err(|_| ApiError::RequestTimeout(timeout.as_secs()))?
}

async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::InvalidJson(format!("could not read body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses `body` as JSON into `T`, after checking the request said it was JSON.
///
/// # Errors
/// [`ApiError::InvalidJson`] for a content type other than `application/json`, a body
/// that is not a JSON object, malformed JSON, or JSON of the wrong shape (unknown
/// fields included), with serde's explanation.
pub fn parse<T: DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err(ApiError::InvalidJson(format!(
            "Content-Type must be application/json, not `{}`",
            if content_type.is_empty() {
                "(none)"
            } else {
                content_type
            }
        )));
    }
    // Structs would also accept a JSON array (fields by position): refuse anything but
    // an object up front.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidJson(
            "request body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("request body is not valid: {e}")))
}
