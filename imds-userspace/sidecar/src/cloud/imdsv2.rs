//! IMDSv2 sessions: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds` returns a token that later
//! requests present in `X-aws-ec2-metadata-token`, as on AWS.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const MAX_TTL_SECONDS: u32 = 21_600;
/// Live sessions kept per VM; a guest issuing more evicts the one that
/// expires soonest.
pub const MAX_SESSIONS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error("missing header X-aws-ec2-metadata-token-ttl-seconds")]
    Missing,
    #[error("X-aws-ec2-metadata-token-ttl-seconds must be a whole number of seconds from 1 to 21600")]
    Invalid,
}

/// The TTL header of a token request, as AWS validates it.
pub fn parse_ttl(value: Option<&[u8]>) -> Result<u32, TtlError> {
    let value = value.ok_or(TtlError::Missing)?;
    let text = std::str::from_utf8(value).map_err(|_| TtlError::Invalid)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TtlError::Invalid);
    }
    text.parse::<u32>().ok().filter(|t| (1..=MAX_TTL_SECONDS).contains(t)).ok_or(TtlError::Invalid)
}

#[derive(Debug, Default)]
pub struct Sessions {
    expiries: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session token valid for `ttl` from `now`.
    pub fn issue(&self, ttl: Duration, now: Instant) -> Result<String, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let mut expiries = self.expiries.lock().unwrap_or_else(|e| e.into_inner());
        expiries.retain(|_, expiry| *expiry > now);
        if expiries.len() >= MAX_SESSIONS
            && let Some(oldest) = expiries.iter().min_by_key(|(_, e)| **e).map(|(t, _)| t.clone())
        {
            expiries.remove(&oldest);
        }
        expiries.insert(token.clone(), now + ttl);
        Ok(token)
    }

    /// Whether `token` was issued here and has not expired at `now`.
    pub fn is_valid(&self, token: &[u8], now: Instant) -> bool {
        let Ok(token) = std::str::from_utf8(token) else { return false };
        let expiries = self.expiries.lock().unwrap_or_else(|e| e.into_inner());
        expiries.get(token).is_some_and(|expiry| *expiry > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_header_rules() {
        assert_eq!(parse_ttl(Some(b"21600")), Ok(21600));
        assert_eq!(parse_ttl(Some(b"1")), Ok(1));
        assert_eq!(parse_ttl(None), Err(TtlError::Missing));
        for bad in [&b"0"[..], b"21601", b"-1", b"", b" 60", b"60s", b"1e3", b"99999999999999999999", b"\xff"]
        {
            assert_eq!(parse_ttl(Some(bad)), Err(TtlError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn tokens_expire_and_are_unguessable() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let a = sessions.issue(Duration::from_secs(2), t0).unwrap();
        let b = sessions.issue(Duration::from_secs(2), t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(sessions.is_valid(a.as_bytes(), t0 + Duration::from_secs(1)));
        assert!(!sessions.is_valid(a.as_bytes(), t0 + Duration::from_secs(2)));
        assert!(!sessions.is_valid(b"forged", t0));
        assert!(!sessions.is_valid(b"\xff\xfe", t0));
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::default();
        let t0 = Instant::now();
        let first = sessions.issue(Duration::from_secs(10), t0).unwrap();
        for i in 0..MAX_SESSIONS {
            sessions.issue(Duration::from_secs(20 + i as u64), t0).unwrap();
        }
        assert_eq!(sessions.expiries.lock().unwrap().len(), MAX_SESSIONS);
        assert!(
            !sessions.is_valid(first.as_bytes(), t0),
            "the session expiring soonest should have been evicted"
        );
    }
}
