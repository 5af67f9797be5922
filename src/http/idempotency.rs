//! `Idempotency-Key` handling (Stripe / IETF draft semantics): the same key with the
//! same body replays the stored response with `Idempotent-Replayed: true`; with a
//! different body it is refused (422); while the first request runs it is refused
//! (409). Requests that fail validation are not remembered, so a client can fix the
//! body and retry with the same key.

use actix_web::http::{header::HeaderName, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use herald_actors::ports::{IdempotencyClaim, IdempotentResponse, Store};

use super::problem::{ApiError, PROBLEM_JSON};

/// Header carrying the client's key.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Header marking a replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// A claim older than this whose request never finished (the node died) is taken
/// over by the next request with the key.
pub const IN_FLIGHT_TIMEOUT_SECS: i64 = 60;
/// Keys are kept at least this long (DESIGN: 24 h).
pub const RETENTION_HOURS: i64 = 24;

/// A claimed key: the handler owns it until it stores a response or releases it.
#[derive(Debug, Clone)]
pub struct ClaimedKey {
    /// Key scope (endpoint and, for authenticated calls, caller).
    pub scope: String,
    /// The key.
    pub key: String,
}

impl ClaimedKey {
    /// The record to store with the handler's own transaction.
    pub fn response(&self, status: StatusCode, body: Bytes) -> IdempotentResponse {
        IdempotentResponse {
            scope: self.scope.clone(),
            key: self.key.clone(),
            status: status.as_u16(),
            body,
        }
    }
}

/// Reads the key header: `Ok(None)` when absent.
///
/// # Errors
/// [`ApiError::IdempotencyKeyInvalid`] for an empty, over-long or non-ASCII key.
pub fn key_from(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::IdempotencyKeyInvalid)?
        .trim();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(ApiError::IdempotencyKeyInvalid);
    }
    Ok(Some(key.to_owned()))
}

/// Fingerprint of a request body. JSON is hashed in a canonical form (sorted keys, no
/// whitespace) so that a retry which re-serialized the same object still matches.
pub fn fingerprint(body: &[u8]) -> String {
    let canonical = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_vec(&v).ok());
    hex::encode(Sha256::digest(canonical.as_deref().unwrap_or(body)))
}

/// What to do with a request that carries a key.
pub enum Claim {
    /// Proceed; store the response under this key.
    Proceed(ClaimedKey),
    /// Answer with this replayed response.
    Replay(HttpResponse),
}

/// Claims `key` in `scope` for a request with `body`.
///
/// # Errors
/// 422 for a reused key, 409 while in flight, 503 when the store is down.
pub async fn claim(
    store: &dyn Store,
    scope: String,
    key: String,
    body: &[u8],
) -> Result<Claim, ApiError> {
    let claimed = store
        .claim_idempotency_key(&scope, &key, &fingerprint(body), IN_FLIGHT_TIMEOUT_SECS)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    match claimed {
        IdempotencyClaim::Claimed => Ok(Claim::Proceed(ClaimedKey { scope, key })),
        IdempotencyClaim::Replay { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let content_type = if status.is_success() {
                "application/json"
            } else {
                PROBLEM_JSON
            };
            Ok(Claim::Replay(
                HttpResponse::build(status)
                    .content_type(content_type)
                    .insert_header((IDEMPOTENT_REPLAYED, "true"))
                    .body(body),
            ))
        }
        IdempotencyClaim::Mismatch => Err(ApiError::IdempotencyKeyReused),
        IdempotencyClaim::InFlight => Err(ApiError::IdempotencyInFlight),
    }
}

/// Gives a claimed key back after a failure on our side, so the client can retry.
pub async fn release(store: &dyn Store, claimed: &ClaimedKey) {
    if let Err(err) = store
        .release_idempotency_key(&claimed.scope, &claimed.key)
        .await
    {
        tracing::warn!(error = %err, "idempotency key not released; it frees itself after the in-flight timeout");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace_but_not_values() {
        let a = fingerprint(br#"{"a":1,"b":"x"}"#);
        assert_eq!(a, fingerprint(b"{ \"b\": \"x\",\n \"a\": 1 }"));
        assert_ne!(a, fingerprint(br#"{"a":2,"b":"x"}"#));
    }
}
