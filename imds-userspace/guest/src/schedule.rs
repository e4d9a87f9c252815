//! When to fetch a token again: pure arithmetic over [`Lifetime`]s, random
//! draws passed in, so every rule is tested without a clock.
//!
//! - A fresh token is fetched again at 80 % of its lifetime (when the
//!   kubelet rotates the pod's copy) plus a jitter of up to 5 % of it, so
//!   that many VMs started together do not ask together.
//! - Past that point with the same token (the kubelet has not rotated it
//!   yet), the helper polls every tenth of the time left, between 1 s and
//!   60 s.
//! - After a failure it backs off exponentially from 1 s to 60 s with full
//!   jitter; the token it holds stays in place meanwhile.

use std::time::{Duration, SystemTime};

use crate::jwt::Lifetime;

pub const REFRESH_AT: f64 = 0.80;
pub const JITTER: f64 = 0.05;
pub const POLL_MIN: Duration = Duration::from_secs(1);
pub const POLL_MAX: Duration = Duration::from_secs(60);
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The refresh point of `token`: `issued_at + (80 % + u·5 %) · ttl`, with
/// `u` a uniform draw in [0, 1).
pub fn refresh_point(token: &Lifetime, u: f64) -> SystemTime {
    let fraction = REFRESH_AT + JITTER * u.clamp(0.0, 1.0);
    token.issued_at + token.ttl().mul_f64(fraction)
}

/// How long to wait after a successful fetch at `now` of a token whose
/// refresh point is `refresh_at`.
pub fn after_success(token: &Lifetime, refresh_at: SystemTime, now: SystemTime) -> Duration {
    match refresh_at.duration_since(now) {
        Ok(wait) if !wait.is_zero() => wait,
        // Due already: the pod's copy has not been rotated yet. Poll.
        _ => {
            let left = token.expires_at.duration_since(now).unwrap_or_default();
            (left / 10).clamp(POLL_MIN, POLL_MAX)
        }
    }
}

/// The wait before attempt `failures + 1`, `u` uniform in [0, 1): full
/// jitter over `[cap/2, cap]` where `cap = min(1 s · 2^failures, 60 s)`.
pub fn after_failure(failures: u32, u: f64) -> Duration {
    let cap =
        BACKOFF_FIRST.saturating_mul(1u32.checked_shl(failures.min(16)).unwrap_or(u32::MAX)).min(BACKOFF_MAX);
    cap.mul_f64(0.5 + 0.5 * u.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn hour() -> Lifetime {
        Lifetime { issued_at: UNIX_EPOCH, expires_at: at(3600) }
    }

    #[test]
    fn refresh_falls_between_80_and_85_percent() {
        assert_eq!(refresh_point(&hour(), 0.0), at(2880));
        let middle = refresh_point(&hour(), 0.5).duration_since(at(2970)).unwrap_or_else(|e| e.duration());
        assert!(middle < Duration::from_millis(1), "82.5 % of an hour is 2970 s, off by {middle:?}");
        assert_eq!(refresh_point(&hour(), 7.0), at(3060), "draws are clamped");
    }

    #[test]
    fn a_fresh_token_waits_for_its_refresh_point() {
        assert_eq!(after_success(&hour(), at(2880), at(100)), Duration::from_secs(2780));
    }

    #[test]
    fn an_unrotated_token_is_polled_more_often_as_it_nears_expiry() {
        // 600 s left: a tenth is 60 s. 300 s left: 30 s. 5 s left: the 1 s floor.
        assert_eq!(after_success(&hour(), at(2880), at(3000)), Duration::from_secs(60));
        assert_eq!(after_success(&hour(), at(2880), at(3300)), Duration::from_secs(30));
        assert_eq!(after_success(&hour(), at(2880), at(3595)), Duration::from_secs(1));
        assert_eq!(
            after_success(&hour(), at(2880), at(9999)),
            Duration::from_secs(1),
            "expired: still bounded"
        );
        // Due exactly now.
        assert_eq!(after_success(&hour(), at(2880), at(2880)), Duration::from_secs(60));
    }

    #[test]
    fn backoff_doubles_to_a_minute_with_jitter_in_its_upper_half() {
        let tops: Vec<u64> = (0..9).map(|n| after_failure(n, 1.0).as_secs()).collect();
        assert_eq!(tops, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(after_failure(3, 0.0), Duration::from_secs(4));
        assert_eq!(after_failure(u32::MAX, 0.5), Duration::from_secs(45), "no overflow");
    }
}
