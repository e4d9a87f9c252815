//! The two claims of a ServiceAccount token the helper schedules by. The
//! signature is not checked: the helper only copies the token, the
//! services it is presented to verify it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

/// When a token was issued and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimsError {
    #[error("the token is not a JWT (expected three dot-separated parts)")]
    NotAJwt,
    #[error("the token's claims are not base64url JSON with a numeric `exp`")]
    BadClaims,
    #[error("the token's `exp` is not after its `iat`")]
    EmptyLifetime,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    iat: Option<u64>,
}

impl Lifetime {
    /// The token's lifetime from its claims; a token without `iat` counts
    /// as issued at `fetched_at`.
    pub fn of(jwt: &str, fetched_at: SystemTime) -> Result<Self, ClaimsError> {
        let mut parts = jwt.split('.');
        let (Some(_header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ClaimsError::NotAJwt);
        };
        // Bounded by the HTTP body limit; claims of a real token are < 2 KiB.
        let json =
            URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).map_err(|_| ClaimsError::BadClaims)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| ClaimsError::BadClaims)?;
        let at = |secs: u64| UNIX_EPOCH.checked_add(Duration::from_secs(secs)).ok_or(ClaimsError::BadClaims);
        let expires_at = at(claims.exp)?;
        let issued_at = match claims.iat {
            Some(iat) => at(iat)?,
            None => fetched_at,
        };
        if expires_at <= issued_at {
            return Err(ClaimsError::EmptyLifetime);
        }
        Ok(Self { issued_at, expires_at })
    }

    pub fn ttl(&self) -> Duration {
        self.expires_at.duration_since(self.issued_at).unwrap_or_default()
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn token(claims: &str) -> String {
        format!(
            "{}.{}.c2lnbmF0dXJl",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    fn secs(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn lifetime_comes_from_iat_and_exp() {
        let l = Lifetime::of(&token(r#"{"iat":1000,"exp":4600,"sub":"x"}"#), secs(5)).unwrap();
        assert_eq!(l, Lifetime { issued_at: secs(1000), expires_at: secs(4600) });
        assert_eq!(l.ttl(), Duration::from_secs(3600));
        assert!(!l.is_expired(secs(4599)));
        assert!(l.is_expired(secs(4600)));
    }

    #[test]
    fn missing_iat_counts_from_the_fetch() {
        let l = Lifetime::of(&token(r#"{"exp":4600}"#), secs(1600)).unwrap();
        assert_eq!(l.ttl(), Duration::from_secs(3000));
    }

    #[test]
    fn hostile_tokens_are_errors_not_panics() {
        let cases = [
            ("", ClaimsError::NotAJwt),
            ("a.b", ClaimsError::NotAJwt),
            ("a.b.c.d", ClaimsError::NotAJwt),
            ("a.!!!.c", ClaimsError::BadClaims),
            (&token(r#"{"iat":1}"#) as &str, ClaimsError::BadClaims),
            (&token(r#"{"exp":-1}"#), ClaimsError::BadClaims),
            (&token(r#"{"exp":18446744073709551615}"#), ClaimsError::BadClaims),
            (&token(r#"{"iat":10,"exp":10}"#), ClaimsError::EmptyLifetime),
            (&token("[]"), ClaimsError::BadClaims),
        ];
        for (jwt, expected) in cases {
            assert_eq!(Lifetime::of(jwt, secs(0)), Err(expected), "{jwt:?}");
        }
    }
}
