//! A token's lifetime, from the claims `imds_api::jwt` reads (the sidecar
//! reads them with the same code). The signature is not checked: the
//! helper only copies the token, the services it is presented to verify it.

use std::time::{Duration, SystemTime};

pub use imds_api::jwt::JwtError;

/// When a token was issued and when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClaimsError {
    #[error("the token is not a JWT: {0}")]
    NotAJwt(#[from] JwtError),
    #[error("the token's `exp` is not after its `iat`")]
    EmptyLifetime,
}

impl Lifetime {
    /// The token's lifetime from its claims; a token without a usable `iat`
    /// counts as issued at `fetched_at`.
    pub fn of(jwt: &str, fetched_at: SystemTime) -> Result<Self, ClaimsError> {
        let claims = imds_api::jwt::claims(jwt)?;
        let issued_at = claims.issued_at.unwrap_or(fetched_at);
        if claims.expires_at <= issued_at {
            return Err(ClaimsError::EmptyLifetime);
        }
        Ok(Self { issued_at, expires_at: claims.expires_at })
    }

    pub fn ttl(&self) -> Duration {
        self.expires_at.duration_since(self.issued_at).unwrap_or_default()
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use std::time::UNIX_EPOCH;

    fn token(claims: &str) -> String {
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
    fn tokens_without_a_lifetime_are_errors() {
        assert_eq!(Lifetime::of("a.b", secs(0)), Err(ClaimsError::NotAJwt(JwtError::Shape)));
        assert_eq!(
            Lifetime::of(&token(r#"{"iat":1}"#), secs(0)),
            Err(ClaimsError::NotAJwt(JwtError::MissingExp))
        );
        assert_eq!(Lifetime::of(&token(r#"{"iat":10,"exp":10}"#), secs(0)), Err(ClaimsError::EmptyLifetime));
        assert_eq!(Lifetime::of(&token(r#"{"exp":10}"#), secs(20)), Err(ClaimsError::EmptyLifetime));
    }
}
