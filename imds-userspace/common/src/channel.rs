//! What the node agent, the sidecar and the sidecar's startup probe say to
//! each other over the sidecar's unix socket ([`crate::contract::SOCKET_NAME`]
//! in the pod's [`crate::contract::RUN_VOLUME`]).
//!
//! The sidecar listens; clients connect and send requests, one JSON object
//! per line, and read one JSON line back for each. Lines are at most
//! [`MAX_LINE`] bytes. The conversation is small on purpose: the agent needs
//! the pod's data-path settings and tells the sidecar when its end-to-end
//! probe through the real data path came back; the startup probe asks
//! whether a guest would be served.
//!
//! ```text
//! agent   -> {"op":"agent-hello","protocol":1,"node":"node-1","agent_version":"0.1.0"}
//! sidecar <- {"answer":"pod-settings","protocol":1,"bridge":null,"guest_port_prefix":"tap",…}
//! agent   -> {"op":"probe-succeeded","nonce":"…"}
//! sidecar <- {"answer":"ack"}
//! probe   -> {"op":"status"}
//! sidecar <- {"answer":"status","ready":true,"message":"…",…}
//! ```

use serde::{Deserialize, Serialize};

/// Version of this protocol; a peer speaking another answers with
/// [`Response::Error`] naming both.
pub const PROTOCOL: u32 = 1;

/// Longest line either side accepts (a request or a response), in bytes.
pub const MAX_LINE: usize = 16 * 1024;

/// The header of the agent's probe request through the data path; its value
/// is the nonce the agent later reports in [`Request::ProbeSucceeded`].
pub const PROBE_HEADER: &str = "x-kubevirt-imds-probe";
/// Longest probe nonce the sidecar records, in bytes.
pub const MAX_NONCE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// The node agent introduces itself; answered with
    /// [`Response::PodSettings`].
    AgentHello { protocol: u32, node: String, agent_version: String },
    /// The agent's request carrying `nonce` in [`PROBE_HEADER`] went through
    /// the data path (a probe guest, the redirect, the veth, this server)
    /// and its answer came back the same way.
    ProbeSucceeded { nonce: String },
    /// The startup probe: would a guest be served?
    Status,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Response {
    /// What the agent needs to plumb this pod (from the pod's annotations,
    /// through the sidecar's environment).
    PodSettings(PodSettings),
    Ack,
    Status(Status),
    /// The request was not understood or not acceptable; nothing changed.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSettings {
    pub protocol: u32,
    /// Serve only the VM behind this bridge (`None`: every `k6t-*` bridge).
    pub bridge: Option<String>,
    /// Bridge ports whose names start with this are the VM's TAPs.
    pub guest_port_prefix: String,
    /// For the agent's log lines.
    pub namespace: String,
    pub pod_name: Option<String>,
    pub vm_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// A guest would be served: the server listens on the agent's veth and
    /// a probe the agent sent through the data path was answered.
    pub ready: bool,
    /// One line for a person: why not ready, naming what is missing.
    pub message: String,
    /// The node of the agent that last introduced itself, if any did.
    pub agent_node: Option<String>,
    /// Requests served since the sidecar started (all of them arrived
    /// through the veth: the listener admits nothing else).
    pub served: u64,
}

/// One line of JSON, newline-terminated.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

/// A line (without its newline) as a message; the error says what is wrong
/// in words fit for a log line.
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, String> {
    if line.len() > MAX_LINE {
        return Err(format!("line of {} bytes, more than {MAX_LINE}", line.len()));
    }
    serde_json::from_slice(line).map_err(|e| format!("not a message of protocol {PROTOCOL}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_documented() {
        let hello = Request::AgentHello { protocol: 1, node: "node-1".into(), agent_version: "0.1.0".into() };
        let line = encode(&hello);
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            "{\"op\":\"agent-hello\",\"protocol\":1,\"node\":\"node-1\",\"agent_version\":\"0.1.0\"}\n"
        );
        assert_eq!(decode::<Request>(&line[..line.len() - 1]), Ok(hello));
        assert_eq!(decode::<Request>(br#"{"op":"status"}"#), Ok(Request::Status));
        let status =
            Response::Status(Status { ready: false, message: "m".into(), agent_node: None, served: 0 });
        let line = encode(&status);
        assert!(
            line.starts_with(br#"{"answer":"status","ready":false"#),
            "{}",
            String::from_utf8_lossy(&line)
        );
        assert_eq!(decode::<Response>(&line[..line.len() - 1]), Ok(status));
    }

    #[test]
    fn hostile_lines_are_refused_with_a_reason() {
        for bad in [&b""[..], b"{}", b"{\"op\":\"reboot\"}", b"\xff\xfe", b"[1,2]", b"{\"op\":\"status\""] {
            assert!(decode::<Request>(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b' '; MAX_LINE + 1];
        assert!(decode::<Request>(&long).unwrap_err().contains("more than"));
    }
}
