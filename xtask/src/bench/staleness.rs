//! How long after the kubelet's rename a request can still be served the
//! previous token (`token_watch` notices the rename on the server's one
//! thread). The release `serve` on loopback, kept busy by wrk (64
//! keep-alive connections on `/v1/token`), and a probe that loops on one
//! keep-alive connection recording when each request left and which token
//! came back; the volume is rotated every [`INTERVAL`]. For each rotation:
//! the latest request sent after the rename that still got the old token
//! (its lateness is the staleness; 0 when none did), and the first answer
//! with the new one.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail, ensure};
use imds_tests::tokens::{ProjectedVolume, jwt};

use super::{ID, ID_ARGS, stats::Summary, wait_for};

/// Rotations measured.
pub const ROTATIONS: usize = 50;
const INTERVAL: Duration = Duration::from_millis(200);

/// Per rotation, in µs.
#[derive(Clone, Copy, Debug)]
pub struct Staleness {
    /// How late after the rename the last stale request was sent.
    pub stale_after_us: Summary,
    /// Rotations in which some request sent after the rename got the old token.
    pub rotations_with_stale: usize,
    /// Rename to the first answer carrying the new token.
    pub first_new_us: Summary,
    pub rotations: usize,
}

/// One answer the probe got.
struct Answer {
    sent: Instant,
    received: Instant,
    token: String,
}

pub fn run(sidecar: &Path, scratch: &Path) -> anyhow::Result<Staleness> {
    let volume = ProjectedVolume::new(&scratch.join("staleness-token"))?;
    let exp = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs() + 3600;
    // Made once: a token carries its issue time, so making one again differs.
    let tokens: Vec<String> = (0..=ROTATIONS)
        .map(|n| jwt(ID.namespace, ID.service_account, exp, &format!("rotation-{n}")))
        .collect();
    volume.publish(&tokens[0])?;
    let addr = free_loopback_port()?;
    let _server = Killed(
        Command::new(sidecar)
            .args(["serve", "--listen", &addr.to_string()])
            .args(ID_ARGS)
            .arg("--token-dir")
            .arg(volume.dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting serve")?,
    );
    wait_for(|| TcpStream::connect(addr).is_ok(), "serve listening")?;
    let load_seconds = (INTERVAL.as_secs_f64() * (ROTATIONS + 2) as f64).ceil() as u64 + 1;
    let _load = Killed(
        Command::new("wrk")
            .args(["-t1", "-c64", &format!("-d{load_seconds}s")])
            .args(["-H", "Metadata: true", "-H", &format!("Host: {}", imds_common::contract::IMDS_IP)])
            .arg(format!("http://{addr}{}", imds_api::TOKEN_PATH))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wrk")?,
    );

    let answers = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = std::thread::spawn({
        let (answers, stop) = (answers.clone(), stop.clone());
        move || probe(addr, &answers, &stop)
    });
    std::thread::sleep(INTERVAL);
    // (publish called, publish returned): the rename is in between.
    let mut renamed = Vec::with_capacity(ROTATIONS);
    for token in &tokens[1..] {
        let called = Instant::now();
        volume.publish(token)?;
        renamed.push((called, Instant::now()));
        std::thread::sleep(INTERVAL);
    }
    stop.store(true, Ordering::Relaxed);
    probe.join().map_err(|_| anyhow::anyhow!("the probe panicked"))??;
    let answers = std::mem::take(&mut *answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    judge(&answers, &renamed, &tokens)
}

/// Loops GET /v1/token on one keep-alive connection until `stop`.
fn probe(addr: SocketAddr, answers: &Mutex<Vec<Answer>>, stop: &AtomicBool) -> anyhow::Result<()> {
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nMetadata: true\r\n\r\n",
        imds_api::TOKEN_PATH,
        imds_common::contract::IMDS_IP
    );
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        writer.write_all(request.as_bytes())?;
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            ensure!(reader.read_line(&mut line)? > 0, "serve closed the connection");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0; length.context("no Content-Length")?];
        reader.read_exact(&mut body)?;
        let received = Instant::now();
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let token = v["token"].as_str().context("no token in the answer")?.to_owned();
        answers.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(Answer { sent, received, token });
    }
    Ok(())
}

/// The figures of [`Staleness`] from the probe's answers; `tokens[n]` is
/// the token published during `renamed[n - 1]` (`tokens[0]` before), which
/// holds when publishing was called and when it returned. Lateness counts
/// from the return (the rename is before it: an upper bound).
fn judge(answers: &[Answer], renamed: &[(Instant, Instant)], tokens: &[String]) -> anyhow::Result<Staleness> {
    let mut stale_after = Vec::new();
    let mut first_new = Vec::new();
    let mut with_stale = 0;
    for (i, (_, at)) in renamed.iter().enumerate() {
        let (old, new) = (&tokens[i], &tokens[i + 1]);
        let late = answers
            .iter()
            .filter(|a| a.sent > *at && a.token == *old)
            .map(|a| (a.sent - *at).as_secs_f64() * 1e6)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        if late.is_some() {
            with_stale += 1;
        }
        stale_after.push(late.unwrap_or(0.0));
        match answers.iter().find(|a| a.token == *new) {
            Some(a) => first_new.push(a.received.saturating_duration_since(*at).as_secs_f64() * 1e6),
            None => bail!("rotation {} was never served", i + 1),
        }
        // Never a token other than the two around this rename in between.
        let next = renamed.get(i + 1).map(|(called, _)| *called);
        if let Some(a) = answers.iter().find(|a| {
            a.sent > *at && next.is_none_or(|n| a.received < n) && a.token != *old && a.token != *new
        }) {
            bail!("a token neither before nor after rotation {} was served ({} bytes)", i + 1, a.token.len());
        }
    }
    Ok(Staleness {
        stale_after_us: Summary::of(&stale_after).context("no rotations")?,
        rotations_with_stale: with_stale,
        first_new_us: Summary::of(&first_new).context("no rotations")?,
        rotations: renamed.len(),
    })
}

fn free_loopback_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A child killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(base: Instant, sent_us: u64, took_us: u64, token: &str) -> Answer {
        let sent = base + Duration::from_micros(sent_us);
        Answer { sent, received: sent + Duration::from_micros(took_us), token: token.into() }
    }

    #[test]
    fn staleness_is_the_last_old_answer_sent_after_the_rename() {
        let t0 = Instant::now();
        let tokens: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let at = |us| (t0 + Duration::from_micros(us - 5), t0 + Duration::from_micros(us));
        let renamed = [at(1000), at(2000)];
        let answers = [
            answer(t0, 900, 50, "a"),
            answer(t0, 1010, 50, "a"), // sent 10 µs after the first rename, old
            answer(t0, 1030, 50, "a"), // 30 µs after: the staleness
            answer(t0, 1100, 50, "b"), // first new, received at 1150
            answer(t0, 2005, 50, "c"), // second rename: no stale answer
        ];
        let s = judge(&answers, &renamed, &tokens).unwrap();
        assert_eq!(s.rotations, 2);
        assert_eq!(s.rotations_with_stale, 1);
        assert_eq!((s.stale_after_us.min, s.stale_after_us.max), (0.0, 30.0));
        assert_eq!((s.first_new_us.min, s.first_new_us.max), (55.0, 150.0));
    }

    #[test]
    fn a_rotation_never_served_or_a_foreign_token_fails() {
        let t0 = Instant::now();
        let tokens: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let renamed = [(t0 + Duration::from_micros(995), t0 + Duration::from_micros(1000))];
        assert!(judge(&[answer(t0, 1100, 50, "a")], &renamed, &tokens).is_err());
        let foreign = [answer(t0, 1100, 50, "zzz"), answer(t0, 1200, 50, "b")];
        assert!(judge(&foreign, &renamed, &tokens).is_err());
    }
}
