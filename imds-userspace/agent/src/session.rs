//! The agent's side of the conversation with a pod's sidecar
//! ([`imds_common::channel`]): one connection, kept open, a request and its
//! answer at a time.

use std::time::Duration;

use imds_common::channel::{self, MAX_LINE, PROTOCOL, PodSettings, Request, Response, Status};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("talking to the sidecar")]
    Io(#[from] std::io::Error),
    #[error("the sidecar did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the sidecar closed the connection")]
    Closed,
    #[error("the sidecar's answer: {0}")]
    Protocol(String),
    #[error("the sidecar refused: {0}")]
    Refused(String),
}

pub struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
}

impl Session {
    pub fn new(stream: UnixStream, timeout: Duration) -> Self {
        let (read, writer) = stream.into_split();
        Self { reader: BufReader::with_capacity(MAX_LINE, read), writer, timeout }
    }

    /// Introduces the agent; the pod's settings come back.
    pub async fn hello(&mut self, node: &str) -> Result<PodSettings, SessionError> {
        let hello = Request::AgentHello {
            protocol: PROTOCOL,
            node: node.to_owned(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        match self.call(&hello).await? {
            Response::PodSettings(settings) if settings.protocol == PROTOCOL => Ok(settings),
            Response::PodSettings(settings) => Err(SessionError::Protocol(format!(
                "the sidecar speaks protocol {}, this agent {PROTOCOL}",
                settings.protocol
            ))),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn status(&mut self) -> Result<Status, SessionError> {
        match self.call(&Request::Status).await? {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn probe_succeeded(&mut self, nonce: &str) -> Result<(), SessionError> {
        match self.call(&Request::ProbeSucceeded { nonce: nonce.to_owned() }).await? {
            Response::Ack => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    async fn call(&mut self, request: &Request) -> Result<Response, SessionError> {
        let exchange = async {
            self.writer.write_all(&channel::encode(request)).await?;
            let mut line = Vec::new();
            // Bounded: at most MAX_LINE + 1 bytes are read before giving up.
            let read = (&mut self.reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await?;
            if read == 0 {
                return Err(SessionError::Closed);
            }
            let line =
                line.strip_suffix(b"\n").ok_or_else(|| SessionError::Protocol("an overlong line".into()))?;
            let response: Response = channel::decode(line).map_err(SessionError::Protocol)?;
            match response {
                Response::Error { message } => Err(SessionError::Refused(message)),
                other => Ok(other),
            }
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| SessionError::Timeout(self.timeout))?
    }
}

fn unexpected(response: &Response) -> SessionError {
    SessionError::Protocol(format!("unexpected answer {response:?}"))
}
