//! The claims of a ServiceAccount token that the IMDS and its guest helper
//! act on: when it expires (the sidecar refuses expired tokens and states
//! the expiry) and when it was issued (the helper refreshes at a fraction
//! of the lifetime). The signature is not checked: the kubelet wrote the
//! token and the services it is presented to verify it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{
    Engine as _,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};

/// JWTs are unpadded base64url (RFC 7515), but tolerate padding.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Beyond 9999-12-31 a time cannot be written as RFC 3339.
const MAX_NUMERIC_DATE: f64 = 253_402_300_800.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("it is not three dot-separated base64url segments")]
    Shape,
    #[error("its payload is not base64url")]
    PayloadEncoding,
    #[error("its payload is not a JSON object")]
    PayloadJson,
    #[error("its payload has no numeric `exp` claim")]
    MissingExp,
    #[error("its `exp` claim is out of range")]
    ExpOutOfRange,
}

/// `exp`, and `iat` when the token has a usable one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub expires_at: SystemTime,
    pub issued_at: Option<SystemTime>,
}

/// The claims of a compact-serialised JWT.
pub fn claims(jwt: &str) -> Result<Claims, JwtError> {
    let mut segments = jwt.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return Err(JwtError::Shape);
    };
    let is_b64url = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    if !(is_b64url(header) && is_b64url(payload) && is_b64url(signature)) {
        return Err(JwtError::Shape);
    }
    let payload = BASE64URL.decode(payload).map_err(|_| JwtError::PayloadEncoding)?;

    // A JSON object (RFC 7519 §7.2): a struct would also take `[exp, iat]`.
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&payload).map_err(|_| JwtError::PayloadJson)?;
    // NumericDate may carry a fraction (RFC 7519 §2); whole seconds suffice.
    let numeric_date = |v: &serde_json::Value| -> Option<Result<SystemTime, JwtError>> {
        let secs = v.as_f64()?;
        Some(if (0.0..MAX_NUMERIC_DATE).contains(&secs) {
            Ok(UNIX_EPOCH + Duration::from_secs(secs as u64))
        } else {
            Err(JwtError::ExpOutOfRange)
        })
    };
    let expires_at = claims.get("exp").and_then(numeric_date).ok_or(JwtError::MissingExp)??;
    // An unusable `iat` is as good as none: its users fall back to when they got the token.
    let issued_at = claims.get("iat").and_then(numeric_date).and_then(Result::ok);
    Ok(Claims { expires_at, issued_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn with_claims(claims: &str) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#), URL_SAFE_NO_PAD.encode(claims))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn exp_and_iat_are_read_fractions_dropped() {
        let c = claims(&with_claims(r#"{"exp":4600.9,"iat":1000,"sub":"x"}"#)).unwrap();
        assert_eq!(c, Claims { expires_at: at(4600), issued_at: Some(at(1000)) });
        let c = claims(&with_claims(r#"{"exp":4600,"iat":"yesterday"}"#)).unwrap();
        assert_eq!(c.issued_at, None, "an unusable iat is none");
        assert_eq!(claims(&with_claims(r#"{"exp":4600,"iat":-5}"#)).unwrap().issued_at, None);
    }

    #[test]
    fn hostile_tokens_are_errors_not_panics() {
        for (jwt, expected) in [
            ("", JwtError::Shape),
            ("abc", JwtError::Shape),
            ("a.b", JwtError::Shape),
            ("a.b.c.d", JwtError::Shape),
            ("a..c", JwtError::Shape),
            ("a.b c.d", JwtError::Shape),
            ("a.!!!.c", JwtError::Shape),
            ("a.Zm9v.c", JwtError::PayloadJson),
            ("a.A.c", JwtError::PayloadEncoding),
        ] {
            assert_eq!(claims(jwt), Err(expected), "{jwt:?}");
        }
        for (payload, expected) in [
            (r#"{"sub":"x"}"#, JwtError::MissingExp),
            (r#"{"exp":"soon"}"#, JwtError::MissingExp),
            (r#"{"exp":-1}"#, JwtError::ExpOutOfRange),
            (r#"{"exp":1e300}"#, JwtError::ExpOutOfRange),
            (r#"{"exp":18446744073709551615}"#, JwtError::ExpOutOfRange),
            ("[1,2]", JwtError::PayloadJson),
        ] {
            assert_eq!(claims(&with_claims(payload)), Err(expected), "{payload}");
        }
    }
}
