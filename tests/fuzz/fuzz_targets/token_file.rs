//! Whatever a token file holds (the kubelet's, or a broken volume's), through
//! the parser that reads its expiry: an answer or an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = imds_sidecar::token::jwt_expiry(text);
    }
});
