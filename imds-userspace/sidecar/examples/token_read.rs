//! What serving the token costs per request, each way it can be got: the
//! old `spawn_blocking` read, an inline open+read+parse, the cache checked
//! through the kubelet's links (same generation), the prepared body of a
//! watched volume (no system call), and a bare clone from memory. Run by
//! `cargo xtask bench`; prints one JSON object of medians in ns.
//!
//! Usage: token_read <token-file in a kubelet-style volume> <iterations>

use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use imds_sidecar::{
    token::{TokenError, TokenFile, TokenSet},
    token_watch,
};

/// The median of `iterations` timed calls of `read`, in ns.
fn median_ns<T>(iterations: usize, mut read: impl FnMut() -> Result<T, TokenError>) -> anyhow::Result<u128> {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        let token = read()?;
        samples.push(start.elapsed().as_nanos());
        std::hint::black_box(token);
    }
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().context("no iterations")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().context("usage: token_read <token-file> <iterations>")?;
    let iterations: usize = args.next().unwrap_or_else(|| "20000".into()).parse().context("iterations")?;
    let file = TokenFile::new(&path);
    let in_memory = file.read()?;

    // The old path: every request hopped to the blocking pool to read.
    let mut hops = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let file = file.clone();
        let start = Instant::now();
        let token = tokio::task::spawn_blocking(move || file.read_uncached()).await??;
        hops.push(start.elapsed().as_nanos());
        std::hint::black_box(token);
    }
    hops.sort_unstable();
    let hop = hops.get(hops.len() / 2).copied().context("no iterations")?;

    let links_checked = median_ns(iterations, || file.prepared(SystemTime::now()))?;
    // The sidecar's way: the volume watched, the body prepared once.
    let dir = std::path::Path::new(&path).parent().context("the token file's directory")?;
    let tokens = TokenSet::new(dir, true, &[]);
    let watched = tokens.default_token().context("the default token")?.clone();
    let _watch = token_watch::start(&tokens)?;
    anyhow::ensure!(watched.is_watched(), "{path} is not in a kubelet-style volume");

    let report = serde_json::json!({
        "spawn_blocking + read + parse (before the cache)": hop,
        "inline read + parse (no cache)": median_ns(iterations, || file.read_uncached())?,
        "links checked, same generation (before the watch)": links_checked,
        "watched volume, prepared body (now)": median_ns(iterations, || watched.prepared(SystemTime::now()))?,
        "clone of the token in memory": median_ns(iterations, || Ok(std::hint::black_box(&in_memory).clone()))?,
    });
    println!("{report}");
    Ok(())
}
