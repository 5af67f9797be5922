//! Reading JSON request bodies: content type, size limit and parsing, each with its
//! own clear error. Handlers take the raw bytes too, for idempotency hashing.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::problem::ApiError;

/// Deepest nesting of objects and arrays a request body may have. Payloads are stored
/// and forwarded to clients, and not every client's parser copes with deep nesting
/// (serde_json itself stops at 128).
pub const MAX_JSON_DEPTH: usize = 32;

/// The deepest nesting of `{`/`[` in `body`, ignoring brackets inside strings. One pass,
/// no allocation; a malformed body is left for the parser to explain.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in body {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

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
/// that is not a JSON object, nesting deeper than [`MAX_JSON_DEPTH`], malformed JSON,
/// or JSON of the wrong shape (unknown
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
    if nesting_depth(body) > MAX_JSON_DEPTH {
        return Err(ApiError::InvalidJson(format!(
            "request body nests objects and arrays deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("request body is not valid: {e}")))
}

#[cfg(test)]
mod tests {
    use super::nesting_depth;

    #[test]
    fn depth_counts_objects_and_arrays_but_not_brackets_in_strings() {
        assert_eq!(nesting_depth(br#"{}"#), 1);
        assert_eq!(nesting_depth(br#"{"a":[{"b":1}],"c":{}}"#), 3);
        assert_eq!(nesting_depth(br#"{"a":"[[[{{{"}"#), 1);
        assert_eq!(nesting_depth(br#"{"a":"\"[[[\\"}"#), 1);
        assert_eq!(nesting_depth(br#"{"a":"\\"}[[["#), 3);
    }
}
