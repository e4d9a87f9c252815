//! `kubevirt-imds-guest`: see the library's docs and `deploy/guest/`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use imds_guest::{
    config::{self, Config},
    imds_client::ImdsClient,
    keeper::{self, Kept},
    log_lines, schedule, targets,
};

/// Keeps ServiceAccount token files in this VM fresh, from the KubeVirt IMDS.
#[derive(Parser, Debug)]
#[command(name = "kubevirt-imds-guest", version, about)]
struct Cli {
    /// The configuration file (TOML). A missing file at the default path
    /// means defaults; a missing file named here is an error.
    #[arg(short, long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// The IMDS's base URL, overriding the file's `imds`.
    #[arg(long, value_name = "URL")]
    imds: Option<String>,
    /// Write every token once and exit (cloud-init `runcmd`, boot scripts):
    /// 0 when all were written, 1 when any could not be by the deadline,
    /// 2 when the configuration is wrong or asks for what the IMDS does not
    /// serve this VM.
    #[arg(long)]
    once: bool,
    /// With `--once`: give up after this long (the network may still be
    /// coming up).
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Log refreshes that changed nothing, too.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_max_level(if cli.verbose { tracing::Level::DEBUG } else { tracing::Level::INFO })
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let explicit = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| config::DEFAULT_PATH.into());
    let mut config = Config::load(&path, explicit)?;
    if let Some(imds) = cli.imds {
        config = config.with_imds(imds).context("--imds")?;
    }
    let client = ImdsClient::new(&config.imds, config.timeout);
    let deadline = cli.once.then(|| std::time::SystemTime::now() + cli.deadline);
    let targets = match discover(&client, &config, deadline)? {
        Some(targets) => targets,
        None => return Ok(ExitCode::FAILURE),
    };
    for t in &targets {
        tracing::info!(target_name = %t.label, path = %t.token_path().display(), "{}", log_lines::KEEPING);
    }
    let now = std::time::SystemTime::now();
    let kept: Vec<Kept> = targets.into_iter().map(|t| Kept::new(t, now)).collect();
    match deadline {
        None => keeper::keep(&client, kept),
        Some(deadline) => {
            let failed = keeper::once(&client, kept, deadline);
            if failed.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                tracing::error!(failed = ?failed, "--once: not every token could be written before the deadline");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Asks the IMDS what it serves, retrying with backoff while it cannot be
/// reached (the guest's network may not be up yet). `None`: `--once` and
/// the deadline passed. A configuration the IMDS cannot satisfy is an
/// error (exit 2): retrying would not change it.
fn discover(
    client: &ImdsClient,
    config: &Config,
    deadline: Option<std::time::SystemTime>,
) -> anyhow::Result<Option<Vec<targets::Target>>> {
    let mut failures = 0;
    loop {
        let asked = client.identity().and_then(|identity| Ok((identity, client.aws()?)));
        match asked {
            Ok((identity, aws)) => return Ok(Some(targets::resolve(config, &identity, aws.as_ref())?)),
            Err(e) => {
                let wait = schedule::after_failure(failures, fastrand::f64());
                failures += 1;
                if deadline.is_some_and(|d| std::time::SystemTime::now() + wait >= d) {
                    tracing::error!(error = %e, "--once: the IMDS could not be reached before the deadline");
                    return Ok(None);
                }
                tracing::warn!(error = %e, retry_in = ?wait, "{}", log_lines::DISCOVERY_FAILED);
                std::thread::sleep(wait);
            }
        }
    }
}
