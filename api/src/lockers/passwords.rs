//! Password hashing and verification (argon2id), on a few threads of their own: see
//! [`super::Lockers`] for why not tokio's blocking pool.

use super::Lockers;
use crate::error::ApiError;
use std::sync::Arc;

pub(super) type PasswordJob = Box<dyn FnOnce() + Send>;

/// One thread per core for password hashing; they end when the sender is dropped.
pub(super) fn password_threads() -> tokio::sync::mpsc::Sender<PasswordJob> {
    let (tx, rx) = tokio::sync::mpsc::channel::<PasswordJob>(1024);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..std::thread::available_parallelism().map_or(1, |n| n.get()) {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("latch-passwords-{i}"))
            .spawn(move || loop {
                // One thread waits on the queue at a time; the others wait for the lock.
                let job = match rx.lock() {
                    Ok(mut rx) => rx.blocking_recv(),
                    Err(_) => return,
                };
                match job {
                    Some(job) => job(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "password thread not started");
        }
    }
    tx
}

/// An argon2id PHC string for `password`, with a fresh salt.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("argon2: {e}")))
}

/// An argon2id hash of a random password, with the same parameters as every real one: what an
/// unknown user's login is checked against, so it costs what a known user's does. Made once, on
/// a password thread (see [`super::Lockers::new`]).
pub(super) fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let password: [u8; 16] = rand::random();
        hash_password(&hex::encode(password)).unwrap_or_else(|e| {
            tracing::error!(error = %e, "no dummy password hash; unknown users answer faster");
            String::new()
        })
    });
    &DUMMY
}

pub(super) fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

impl Lockers {
    /// Runs password hashing or verification on the password threads, off the async ones.
    pub async fn password_work<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: PasswordJob = Box::new(move || {
            let _ = done.send(work());
        });
        self.password_work
            .send(job)
            .await
            .map_err(|_| ApiError::Internal("password threads stopped".into()))?;
        result
            .await
            .map_err(|_| ApiError::Internal("password job dropped".into()))
    }
}
