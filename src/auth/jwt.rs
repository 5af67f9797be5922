//! HS256 bearer tokens. Only HS256 is accepted, so `alg: none` and algorithm
//! confusion tokens are rejected; `exp` is always required.

use std::fs;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use herald_actors::domain::UserId;

/// The scope a token needs to publish notifications.
pub const SCOPE_PUBLISH: &str = "publish";
/// The scope a token needs for admin endpoints.
pub const SCOPE_ADMIN: &str = "admin";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// File under the data directory holding the generated embedded-mode secret.
pub const SECRET_FILE: &str = "jwt_secret";

/// Token errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Bad signature, wrong algorithm, malformed, or expired.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The secret could not be read or generated.
    #[error("token secret: {0}")]
    Secret(String),
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user (or service) id.
    pub sub: UserId,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Space-separated scopes (`publish`, `admin`); empty for a plain user token.
    #[serde(default)]
    pub scope: String,
}

impl Claims {
    /// Whether the token grants `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scope.split_ascii_whitespace().any(|s| s == scope)
    }

    /// Expiry as a timestamp.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or_default()
    }
}

/// Issues and verifies tokens with one secret.
#[derive(Clone)]
pub struct TokenService {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenService { .. }")
    }
}

impl TokenService {
    /// A service signing with `secret`.
    ///
    /// # Errors
    /// When the secret is shorter than [`MIN_SECRET_LEN`].
    pub fn new(secret: &SecretString) -> Result<Self, TokenError> {
        let bytes = secret.expose_secret().as_bytes();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(TokenError::Secret(format!(
                "auth.jwt_secret must be at least {MIN_SECRET_LEN} bytes"
            )));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            encoding: EncodingKey::from_secret(bytes)?,
            decoding: DecodingKey::from_secret(bytes)?,
            validation,
        })
    }

    /// Signs a token for `sub` valid for `ttl_secs` with `scope`.
    ///
    /// # Errors
    /// Only if encoding fails, which HS256 with a valid key does not.
    pub fn issue(&self, sub: UserId, scope: &str, ttl_secs: u64) -> Result<String, TokenError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub,
            iat: now,
            exp: now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2)),
            scope: scope.to_owned(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// Verifies a token: signature, algorithm and expiry.
    ///
    /// # Errors
    /// [`TokenError::Invalid`] for anything but a valid, unexpired HS256 token.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        Ok(jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)?.claims)
    }
}

/// Reads the embedded-mode secret from `data_dir`, generating it (mode 0600) on first
/// start, so tokens survive restarts without any configuration.
///
/// # Errors
/// When the file cannot be read or written.
pub fn load_or_create_secret(data_dir: &Path) -> Result<SecretString, TokenError> {
    let path = data_dir.join(SECRET_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => return Ok(SecretString::from(s.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(TokenError::Secret(format!(
                "reading {}: {e}",
                path.display()
            )))
        }
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let write = options
        .open(&path)
        .and_then(|mut f| f.write_all(secret.as_bytes()).and_then(|()| f.sync_all()));
    match write {
        Ok(()) => Ok(SecretString::from(secret)),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_secret(data_dir),
        Err(e) => Err(TokenError::Secret(format!(
            "writing {}: {e}",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> TokenService {
        TokenService::new(&SecretString::from("x".repeat(32))).unwrap()
    }

    #[test]
    fn a_token_round_trips_with_its_scope() {
        let tokens = service();
        let user = UserId::new();
        let claims = tokens
            .verify(&tokens.issue(user, "publish", 60).unwrap())
            .unwrap();
        assert_eq!(claims.sub, user);
        assert!(claims.has_scope(SCOPE_PUBLISH));
        assert!(!claims.has_scope(SCOPE_ADMIN));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_rejected() {
        let other = TokenService::new(&SecretString::from("y".repeat(32))).unwrap();
        let token = other.issue(UserId::new(), "", 60).unwrap();
        assert!(service().verify(&token).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TokenService::new(&SecretString::from("short".to_owned())).is_err());
    }

    #[test]
    fn the_generated_secret_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_secret(dir.path()).unwrap();
        let b = load_or_create_secret(dir.path()).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 64);
    }
}
