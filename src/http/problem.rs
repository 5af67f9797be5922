//! The one place where errors become HTTP responses: `application/problem+json`
//! (RFC 9457) with a stable machine-readable `code`.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use tracing::error;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One invalid field of a request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name in the request.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A field error.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Every error an API handler can return.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Body is not JSON, not the expected shape, or not sent as JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// Fields failed validation.
    #[error("request validation failed")]
    Validation(Vec<FieldError>),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    /// Body over the configured limit.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// The request head (header names and values) is over the limit.
    #[error("request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    /// `Idempotency-Key` header required but missing.
    #[error("this endpoint requires an Idempotency-Key header")]
    IdempotencyKeyMissing,
    /// `Idempotency-Key` header unusable.
    #[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
    IdempotencyKeyInvalid,
    /// Same key, different body.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    /// Same key, first request still running.
    #[error("a request with this Idempotency-Key is still being processed; retry later")]
    IdempotencyInFlight,
    /// Email already registered.
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Login failed; deliberately does not say which part was wrong.
    #[error("email or password is incorrect")]
    InvalidCredentials,
    /// Missing, malformed, forged or expired bearer token.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Token lacks a scope.
    #[error("this token lacks the `{0}` scope")]
    InsufficientScope(&'static str),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// The client sent more requests than its rate limit allows.
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a request will pass again (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The node is shutting down; another node will take the request.
    #[error("this node is shutting down; reconnect to another")]
    Draining,
    /// A backend is down; retrying later may work.
    #[error("a backend is unavailable; retry later")]
    Unavailable(String),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::Validation(_) => "validation_failed",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::RequestTimeout(_) => "request_timeout",
            Self::IdempotencyKeyMissing => "idempotency_key_missing",
            Self::IdempotencyKeyInvalid => "idempotency_key_invalid",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyInFlight => "idempotency_in_flight",
            Self::EmailTaken => "email_taken",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Unauthorized(_) => "unauthorized",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::NotFound(_) => "not_found",
            Self::RateLimited { .. } => "rate_limited",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::Draining => "draining",
            Self::Unavailable(_) => "service_unavailable",
            Self::Unexpected(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "Invalid JSON",
            Self::Validation(_) => "Validation failed",
            Self::PayloadTooLarge(_) => "Payload too large",
            Self::RequestTimeout(_) => "Request timeout",
            Self::IdempotencyKeyMissing => "Idempotency-Key missing",
            Self::IdempotencyKeyInvalid => "Idempotency-Key invalid",
            Self::IdempotencyKeyReused => "Idempotency-Key reused",
            Self::IdempotencyInFlight => "Request in flight",
            Self::EmailTaken => "Email taken",
            Self::InvalidCredentials => "Invalid credentials",
            Self::Unauthorized(_) => "Unauthorized",
            Self::InsufficientScope(_) => "Forbidden",
            Self::NotFound(_) => "Not found",
            Self::RateLimited { .. } => "Too many requests",
            Self::HeadersTooLarge(_) => "Request header fields too large",
            Self::Draining => "Shutting down",
            Self::Unavailable(_) => "Service unavailable",
            Self::Unexpected(_) => "Internal server error",
        }
    }

    /// The full problem body, also used to store idempotent error responses.
    pub fn body(&self) -> Vec<u8> {
        problem_body(
            self.status_code(),
            self.code(),
            self.title(),
            &self.to_string(),
            match self {
                Self::Validation(errors) => Some(errors),
                _ => None,
            },
        )
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

fn problem_body(
    status: StatusCode,
    code: &str,
    title: &str,
    detail: &str,
    errors: Option<&[FieldError]>,
) -> Vec<u8> {
    let problem = Problem {
        kind: format!("urn:herald:problem:{code}"),
        title,
        status: status.as_u16(),
        detail,
        code,
        errors,
    };
    serde_json::to_vec(&problem).unwrap_or_default()
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_) | Self::IdempotencyKeyMissing | Self::IdempotencyKeyInvalid => {
                StatusCode::BAD_REQUEST
            }
            Self::Validation(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::IdempotencyInFlight | Self::EmailTaken => StatusCode::CONFLICT,
            Self::InvalidCredentials | Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unavailable(_) | Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Self::Unexpected(err) => error!(error = ?err, "request failed unexpectedly"),
            Self::Unavailable(reason) => error!(%reason, "backend unavailable"),
            _ => {}
        }
        let mut response = HttpResponse::build(self.status_code());
        response.content_type(PROBLEM_JSON);
        if let Self::RateLimited { retry_after_secs } = self {
            response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
        }
        if matches!(self, Self::Unauthorized(_) | Self::InvalidCredentials) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if matches!(self, Self::IdempotencyInFlight) {
            response.insert_header((header::RETRY_AFTER, "1"));
        }
        response.body(self.body())
    }
}

/// Rewrites error responses that did not come from [`ApiError`] (actix's own 404s,
/// 405s, handshake errors) into problem+json, so clients see one error format.
///
/// # Errors
/// Never; the signature is what `ErrorHandlers` expects.
pub fn normalize_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, title, detail) = match status {
        StatusCode::NOT_FOUND => ("not_found", "Not found", "no such route".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "Method not allowed",
            "this route does not accept that method".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "payload_too_large",
            "Payload too large",
            "request body too large".to_owned(),
        ),
        s if s.is_client_error() => (
            "bad_request",
            "Bad request",
            s.canonical_reason().unwrap_or("bad request").to_owned(),
        ),
        s => (
            "internal_error",
            "Internal server error",
            s.canonical_reason().unwrap_or("error").to_owned(),
        ),
    };
    let body = problem_body(status, code, title, &detail, None);
    let (req, mut res) = res.into_parts();
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    let res = res.set_body(BoxBody::new(body));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, res).map_into_right_body(),
    ))
}
