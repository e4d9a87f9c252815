//! `kubevirt-imds-sidecar probe`, the container's startup probe: asks the
//! sidecar over its channel socket whether a guest would be served, and
//! prints the sidecar's own words for why not.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use imds_common::{
    channel::{self, MAX_LINE, Request, Response, Status},
    contract::SOCKET_NAME,
    errors::chain,
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use crate::cli::ProbeArgs;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the kubevirt-imds sidecar is not listening on {}", .path.display())]
    NotListening {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the kubevirt-imds sidecar on {} did not answer within {}",
        .path.display(),
        humantime::format_duration(*.timeout)
    )]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("asking the kubevirt-imds sidecar on {}", .path.display())]
    Exchange {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kubevirt-imds sidecar on {} answered: {answer}", .path.display())]
    Unexpected { path: PathBuf, answer: String },
}

/// What the probe prints, and whether it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub ready: bool,
    pub line: String,
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        if self.ready { 0 } else { 1 }
    }
}

pub async fn probe(args: &ProbeArgs) -> Verdict {
    match status(&args.run_dir.join(SOCKET_NAME), args.timeout).await {
        Ok(status) => Verdict { ready: status.ready, line: status.message },
        Err(e) => Verdict { ready: false, line: chain(&e) },
    }
}

/// One `{"op":"status"}` exchange on `socket`, within `timeout`.
pub async fn status(socket: &Path, timeout: Duration) -> Result<Status, ProbeError> {
    let path = socket.to_owned();
    match tokio::time::timeout(timeout, exchange(socket)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout { path, timeout }),
    }
}

async fn exchange(socket: &Path) -> Result<Status, ProbeError> {
    let path = || socket.to_owned();
    // The run directory may sit deeper than a socket address reaches.
    let (_dir, short) = imds_common::socket_path::shorten(socket)
        .map_err(|source| ProbeError::NotListening { path: path(), source })?;
    let stream = UnixStream::connect(&short)
        .await
        .map_err(|source| ProbeError::NotListening { path: path(), source })?;
    let failed = |source| ProbeError::Exchange { path: path(), source };
    let (read, mut write) = stream.into_split();
    write.write_all(&channel::encode(&Request::Status)).await.map_err(failed)?;
    let mut line = Vec::new();
    BufReader::new(read).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await.map_err(failed)?;
    let unexpected = |answer: String| ProbeError::Unexpected { path: path(), answer };
    if line.pop() != Some(b'\n') {
        return Err(unexpected("no complete line (closed, or longer than the protocol allows)".into()));
    }
    match channel::decode::<Response>(&line).map_err(unexpected)? {
        Response::Status(status) => Ok(status),
        Response::Error { message } => Err(unexpected(format!("error: {message}"))),
        other => Err(unexpected(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        channel_server::{self, ChannelLimits},
        readiness::{Listener, SharedReadiness},
    };
    use imds_common::{
        channel::{PROTOCOL, PodSettings},
        contract::{IMDS_IP, IMDS_PORT},
    };
    use std::{net::SocketAddrV4, time::SystemTime};
    use tokio_util::sync::CancellationToken;

    fn args(dir: &Path) -> ProbeArgs {
        ProbeArgs { run_dir: dir.to_owned(), timeout: Duration::from_secs(2) }
    }

    fn settings() -> PodSettings {
        PodSettings {
            protocol: PROTOCOL,
            bridge: None,
            guest_port_prefix: "tap".into(),
            namespace: "ns".into(),
            pod_name: None,
            vm_name: "vm".into(),
        }
    }

    #[tokio::test]
    async fn says_ready_only_when_the_sidecar_is() {
        let dir = tempfile::tempdir().unwrap();
        let listener = channel_server::bind(&dir.path().join(SOCKET_NAME)).unwrap();
        let readiness = SharedReadiness::default();
        let stop = CancellationToken::new();
        tokio::spawn(channel_server::serve(
            listener,
            settings(),
            readiness.clone(),
            ChannelLimits::default(),
            stop.clone(),
        ));

        let verdict = probe(&args(dir.path())).await;
        assert_eq!(verdict.exit_code(), 1);
        assert!(verdict.line.starts_with("no interface imds-sidecar in this pod yet"), "{}", verdict.line);

        readiness.update(|r| {
            r.set_listener(Listener::Listening { addr: SocketAddrV4::new(IMDS_IP, IMDS_PORT), ifindex: 3 });
            r.request_served(Some("n"));
            r.probe_succeeded("n", Some("node-1"), SystemTime::now()).unwrap();
        });
        let verdict = probe(&args(dir.path())).await;
        assert_eq!(verdict.exit_code(), 0, "{}", verdict.line);
        assert!(verdict.line.starts_with("serving: the agent on node node-1"), "{}", verdict.line);
        stop.cancel();
    }

    #[tokio::test]
    async fn names_the_socket_nobody_listens_on() {
        let dir = tempfile::tempdir().unwrap();
        let verdict = probe(&args(dir.path())).await;
        assert_eq!(verdict.exit_code(), 1);
        let expected = format!(
            "the kubevirt-imds sidecar is not listening on {}",
            dir.path().join(SOCKET_NAME).display()
        );
        assert!(verdict.line.starts_with(&expected), "{}", verdict.line);
    }

    #[tokio::test]
    async fn gives_up_on_a_sidecar_that_does_not_answer() {
        let dir = tempfile::tempdir().unwrap();
        // Bound and accepting (the backlog), never read.
        let _mute = tokio::net::UnixListener::bind(dir.path().join(SOCKET_NAME)).unwrap();
        let args = ProbeArgs { run_dir: dir.path().to_owned(), timeout: Duration::from_millis(200) };
        let verdict = probe(&args).await;
        assert_eq!(verdict.exit_code(), 1);
        assert!(verdict.line.contains("did not answer within 200ms"), "{}", verdict.line);
    }
}
