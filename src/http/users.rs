//! `/api/users`: signup (idempotent, transactional outbox), login, me.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use chrono::{SubsecRound, Utc};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, instrument};
use uuid::Uuid;

use herald_actors::activity::RecordActivity;
use herald_actors::domain::{
    ActivitySource, Email, OutboxEvent, Topic, User, UserCreated, UserId, UserName,
};
use herald_actors::messages::Nudge;
use herald_actors::ports::StoreError;

use super::idempotency::{self, Claim};
use super::json::{parse, read_body};
use super::problem::{ApiError, FieldError};
use super::{authenticate, AppState};
use crate::auth::password;

/// Mounts the user routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/users/signup").post(signup))
        .service(web::resource("/api/users/login").post(login))
        .service(web::resource("/api/users/me").get(me));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupRequest {
    email: Option<String>,
    name: Option<String>,
    password: Option<String>,
}

struct ValidSignup {
    email: Email,
    name: UserName,
    password: SecretString,
}

fn required<'a>(
    field: &str,
    value: &'a Option<String>,
    errors: &mut Vec<FieldError>,
) -> Option<&'a str> {
    match value {
        Some(v) => Some(v),
        None => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
    }
}

impl SignupRequest {
    fn validate(self) -> Result<ValidSignup, ApiError> {
        let mut errors = Vec::new();
        let email = required("email", &self.email, &mut errors).and_then(|e| {
            Email::parse(e)
                .map_err(|err| errors.push(FieldError::new("email", err.0)))
                .ok()
                // The welcome email must be sendable: refuse what the mail library
                // would (`a..b@x`, `a,b@x`), rather than accept a user it cannot reach.
                .filter(|email| {
                    let sendable = email.as_str().parse::<lettre::Address>().is_ok();
                    if !sendable {
                        errors.push(FieldError::new(
                            "email",
                            "is not an address mail can be delivered to",
                        ));
                    }
                    sendable
                })
        });
        let name = required("name", &self.name, &mut errors).and_then(|n| {
            UserName::parse(n)
                .map_err(|err| errors.push(FieldError::new("name", err.0)))
                .ok()
        });
        let password = required("password", &self.password, &mut errors).and_then(|p| {
            let len = p.chars().count();
            if len < password::MIN_LEN {
                errors.push(FieldError::new(
                    "password",
                    format!("must be at least {} characters", password::MIN_LEN),
                ));
                None
            } else if len > password::MAX_LEN {
                errors.push(FieldError::new(
                    "password",
                    format!("must be at most {} characters", password::MAX_LEN),
                ));
                None
            } else {
                Some(SecretString::from(p.to_owned()))
            }
        });
        match (email, name, password) {
            (Some(email), Some(name), Some(password)) if errors.is_empty() => Ok(ValidSignup {
                email,
                name,
                password,
            }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

#[instrument(skip_all, fields(user_id))]
async fn signup(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = idempotency::key_from(&req)?.ok_or(ApiError::IdempotencyKeyMissing)?;
    let body = read_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let signup = parse::<SignupRequest>(&req, &body)?.validate()?;

    let claimed = match idempotency::claim(&*state.store, "signup".into(), key, &body).await? {
        Claim::Replay(response) => return Ok(response),
        Claim::Proceed(claimed) => claimed,
    };

    let password_hash = match password::hash(signup.password).await {
        Ok(hash) => hash,
        Err(err) => {
            idempotency::release(&*state.store, &claimed).await;
            return Err(ApiError::Unexpected(err.into()));
        }
    };
    let user = User {
        id: UserId::new(),
        email: signup.email,
        name: signup.name,
        created_at: Utc::now().trunc_subsecs(6),
    };
    tracing::Span::current().record("user_id", tracing::field::display(user.id));
    let created = UserCreated {
        event_id: Uuid::new_v4(),
        user: user.clone(),
    };
    let event = OutboxEvent {
        id: 0,
        topic: Topic::UserCreated,
        key: user.id.to_string(),
        payload: Bytes::from(serde_json::to_vec(&created).map_err(anyhow::Error::from)?),
    };
    let response_body =
        Bytes::from(serde_json::to_vec(&json!({ "user": user })).map_err(anyhow::Error::from)?);
    let response = claimed.response(StatusCode::CREATED, response_body.clone());

    match state
        .store
        .create_user(&user, &password_hash, &event, Some(&response))
        .await
    {
        Ok(()) => {
            info!("user signed up");
            if let Some(relay) = &state.relay {
                relay.do_send(Nudge);
            }
            Ok(HttpResponse::Created()
                .content_type("application/json")
                .body(response_body))
        }
        Err(StoreError::EmailTaken) => {
            // The request ran to a definite answer: remember it like a success.
            let error = ApiError::EmailTaken;
            let stored = claimed.response(StatusCode::CONFLICT, Bytes::from(error.body()));
            if state.store.complete_idempotency_key(&stored).await.is_err() {
                idempotency::release(&*state.store, &claimed).await;
            }
            Err(error)
        }
        Err(StoreError::Unavailable(reason)) => {
            idempotency::release(&*state.store, &claimed).await;
            Err(ApiError::Unavailable(reason))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    email: Option<String>,
    password: Option<String>,
}

#[instrument(skip_all)]
async fn login(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, state.max_body_bytes, state.body_timeout).await?;
    let login: LoginRequest = parse(&req, &body)?;
    let (email, password) = match (login.email, login.password) {
        (Some(email), Some(password)) => (email, password),
        (email, password) => {
            let missing = [("email", email.is_none()), ("password", password.is_none())];
            return Err(ApiError::Validation(
                missing
                    .iter()
                    .filter(|(_, absent)| *absent)
                    .map(|(field, _)| FieldError::new(field, "is required"))
                    .collect(),
            ));
        }
    };
    let password = SecretString::from(password);
    let credentials = match Email::parse(&email) {
        Ok(email) => state
            .store
            .credentials_by_email(&email)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        Err(_) => None,
    };
    let (user, hash) = match credentials {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    // Verify even for an unknown email, against a decoy, so timing does not reveal
    // which emails are registered.
    let verified = password::verify(password, hash).await;
    let user = user
        .filter(|_| verified)
        .ok_or(ApiError::InvalidCredentials)?;
    // Counting is best effort: a full tracker mailbox must not fail a login.
    let _ = state.activity_tracker.try_send(RecordActivity {
        user: user.id,
        source: ActivitySource::Login,
    });
    let token = state
        .tokens
        .issue(user.id, "", state.token_ttl_secs)
        .map_err(|e| ApiError::Unexpected(e.into()))?;
    info!(user_id = %user.id, "user logged in");
    Ok(HttpResponse::Ok().json(json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": state.token_ttl_secs,
    })))
}

#[instrument(skip_all)]
async fn me(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let claims = authenticate(&req, &state)?;
    let user = state
        .store
        .user_by_id(claims.sub)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
        .ok_or(ApiError::Unauthorized("the token's user does not exist"))?;
    Ok(HttpResponse::Ok().json(json!({ "user": user })))
}
