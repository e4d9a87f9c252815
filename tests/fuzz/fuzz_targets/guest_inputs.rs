//! What the guest helper reads from outside: its configuration file (the
//! user's), and the IMDS's answers (a broken or impersonated IMDS): the
//! first byte picks which. An answer or an error, never a panic, and what
//! is accepted keeps its invariants.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use imds_api::{AwsRole, IdentityResponse, TokenResponse};
use imds_guest::{config::Config, jwt::Lifetime, targets};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 3 {
        0 => {
            let Ok(config) = Config::parse(text) else { return };
            assert!(config.imds.starts_with("http://"));
            for a in &config.audiences {
                assert!(a.dir.is_absolute(), "{:?}", a.dir);
                assert!(!a.file.contains('/') && !a.file.starts_with(".."), "{:?}", a.file);
                assert!(a.access.mode <= 0o777);
            }
        }
        1 => {
            let Ok(served) = serde_json::from_str::<TokenResponse>(text) else { return };
            if let Ok(l) = Lifetime::of(&served.token, UNIX_EPOCH + Duration::from_secs(1_800_000_000)) {
                assert!(l.expires_at > l.issued_at);
            }
        }
        _ => {
            // `/v1/identity` and `/v1/aws` as the IMDS might answer them.
            let (identity, aws) = text.split_once('\n').unwrap_or((text, ""));
            let Ok(identity) = serde_json::from_str::<IdentityResponse>(identity) else { return };
            let aws = serde_json::from_str::<AwsRole>(aws).ok();
            let Ok(config) = Config::parse("[[audience]]\naudience = \"vault\"\ndir = \"/run/vault\"") else {
                return;
            };
            if let Ok(kept) = targets::resolve(&config, &identity, aws.as_ref()) {
                for t in kept {
                    for extra in &t.extras {
                        if let targets::Extra::AwsEnv { role_arn, .. } = extra {
                            // One line per variable: nothing the IMDS sends adds one.
                            assert!(!role_arn.contains(['\n', '\r', '\0', ' ', '$', '`']), "{role_arn:?}");
                        }
                    }
                }
            }
        }
    }
});
