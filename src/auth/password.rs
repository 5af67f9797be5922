//! Password hashing with argon2id (OWASP's first choice).
//!
//! Each hash takes ~19 MiB and tens of milliseconds of CPU, so hashing runs on a small
//! dedicated pool of threads (one per core, at most four) fed by a bounded queue:
//! memory stays bounded however many logins arrive at once, the async workers never
//! stall, and excess requests wait their turn instead of piling up threads.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use secrecy::{ExposeSecret, SecretString};

/// Shortest password accepted.
pub const MIN_LEN: usize = 8;
/// Longest password accepted (bounds hashing cost per request).
pub const MAX_LEN: usize = 256;

/// Hashes waiting for a hashing thread before callers wait to enqueue.
const QUEUE: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// The queue of the hashing threads, started on first use.
fn hashing_queue() -> &'static mpsc::Sender<Job> {
    static QUEUE_TX: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE_TX.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(4);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("herald-argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(mut rx) => rx.blocking_recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking job must not shrink the pool.
                        Some(job) => drop(catch_unwind(AssertUnwindSafe(job))),
                        None => return,
                    }
                });
            if let Err(err) = spawned {
                tracing::error!(error = %err, "password hashing thread not started");
            }
        }
        tx
    })
}

/// Runs `work` on a hashing thread.
async fn on_hashing_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let (done, result) = oneshot::channel();
    hashing_queue()
        .send(Box::new(move || {
            let _ = done.send(work());
        }))
        .await
        .map_err(|_| PasswordError::Task)?;
    result.await.map_err(|_| PasswordError::Task)
}

/// Hashing errors.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// The hashing library failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The blocking task died.
    #[error("password hashing task failed")]
    Task,
}

/// Hashes `password` into a PHC string with a fresh salt.
///
/// # Errors
/// When hashing fails.
pub async fn hash(password: SecretString) -> Result<String, PasswordError> {
    on_hashing_thread(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.expose_secret().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Hash(e.to_string()))
    })
    .await?
}

/// A hash of a random password, verified against when the email is unknown so that
/// "no such user" costs as much time as "wrong password".
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"decoy password that matches nothing", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

/// Checks `password` against `stored` (or against a decoy when `stored` is `None`).
pub async fn verify(password: SecretString, stored: Option<String>) -> bool {
    on_hashing_thread(move || {
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| decoy_hash().to_owned());
        let Ok(parsed) = PasswordHash::new(&hash) else {
            return false;
        };
        let ok = Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok();
        ok && known
    })
    .await
    .unwrap_or(false)
}
