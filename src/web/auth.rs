//! The page's password (an argon2 hash in `[web] password_file`) and its sessions.
//!
//! A correct password at `POST /login` opens a session: a random 256-bit token in a
//! cookie that scripts cannot read (`HttpOnly`), that no other site's request carries
//! (`SameSite=Strict`) and that only goes over HTTPS (`Secure`). Sessions live in memory
//! for [`SESSION_TTL`]: a restarted daemon asks again. Scripts and Prometheus may send the
//! password with HTTP Basic instead (any user name).
//!
//! Wrong passwords slow the next attempt down, for everyone: each failure in a row
//! doubles the wait before another is even checked (1 s, 2 s, ... up to a minute), which
//! also bounds the CPU argon2 costs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;

pub const COOKIE: &str = "cutover_session";
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1000;
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The argon2id hash of `password`, in the PHC string format (`$argon2id$v=19$...`).
pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

pub struct Auth {
    phc: String,
    sessions: Mutex<HashMap<String, Instant>>,
    /// Failures in a row, and when the next attempt may be checked.
    failures: Mutex<(u32, Option<Instant>)>,
}

/// The answer to a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    Ok,
    Wrong,
    /// Too soon after a wrong one: try again after this long.
    Wait(Duration),
}

impl Auth {
    /// Reads the hash written by `cutover web-password`.
    pub fn load(file: &Path) -> anyhow::Result<Auth> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
        let phc = text.trim().to_string();
        PasswordHash::new(&phc).map_err(|_| {
            anyhow::anyhow!(
                "{} does not hold an argon2 hash; write it with `cutover web-password`",
                file.display()
            )
        })?;
        Ok(Auth {
            phc,
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new((0, None)),
        })
    }

    /// Checks `password`, within the pace that failures set.
    pub fn check(&self, password: &str) -> Check {
        let now = Instant::now();
        {
            let f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(at) = f.1.filter(|at| *at > now) {
                return Check::Wait(at - now);
            }
        }
        let ok = PasswordHash::new(&self.phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if ok {
            *f = (0, None);
            Check::Ok
        } else {
            f.0 = f.0.saturating_add(1);
            let wait = Duration::from_secs(1u64 << (f.0 - 1).min(6)).min(MAX_WAIT);
            f.1 = Some(Instant::now() + wait);
            Check::Wrong
        }
    }

    /// Opens a session; returns its token.
    pub fn open(&self) -> String {
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let mut s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        s.retain(|_, exp| *exp > now);
        if s.len() >= MAX_SESSIONS {
            if let Some(oldest) = s.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                s.remove(&oldest);
            }
        }
        s.insert(token.clone(), now + SESSION_TTL);
        token
    }

    pub fn close(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    pub fn valid(&self, token: &str) -> bool {
        let s = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        s.get(token).is_some_and(|exp| *exp > Instant::now())
    }
}

/// The session token in a `Cookie` header.
pub fn cookie_token(header: Option<&str>) -> Option<&str> {
    header?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The password of an `Authorization: Basic` header (the user name is ignored).
pub fn basic_password(header: Option<&str>) -> Option<String> {
    let b64 = header?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    text.split_once(':').map(|(_, p)| p.to_string())
}

/// `Set-Cookie` for a new session, and for closing one.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_sessions_and_the_pace_of_failures() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, format!("{}\n", hash("correct horse").unwrap())).unwrap();
        let a = Auth::load(&f).unwrap();
        assert_eq!(a.check("correct horse"), Check::Ok);
        assert_eq!(a.check("wrong"), Check::Wrong);
        assert!(matches!(a.check("correct horse"), Check::Wait(w) if w <= Duration::from_secs(1)));
        let t = a.open();
        assert!(a.valid(&t) && !a.valid("forged"));
        a.close(&t);
        assert!(!a.valid(&t));
        std::fs::write(&f, "plaintext-password").unwrap();
        assert!(Auth::load(&f).is_err());
        assert_eq!(
            cookie_token(Some("a=b; cutover_session=tok; c=d")),
            Some("tok")
        );
        assert_eq!(cookie_token(Some("a=b")), None);
        assert_eq!(
            basic_password(Some("Basic dXNlcjpzM2NyOnQ=")).as_deref(),
            Some("s3cr:t")
        );
        assert!(set_cookie("x").contains("HttpOnly; SameSite=Strict; Secure"));
    }
}
