//! Would a guest be served, and if not, what is missing: pure state, fed by
//! the listen loop ([`crate::listen_loop`]), the API's request tally
//! ([`crate::request_tally`]) and the channel server
//! ([`crate::channel_server`]); read by the startup probe over the channel.
//!
//! Ready means: listening on the agent's veth end, and the agent reported
//! that a request of its own (carrying a nonce this server saw) went through
//! the real data path and back. A new listener (the agent recreated the
//! veth) starts over: what was proven for the old one says nothing of it.

use std::{
    collections::VecDeque,
    net::SocketAddrV4,
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use imds_common::{
    channel::{self, MAX_NONCE_LEN},
    contract::{IMDS_PORT, SIDECAR_IF},
};

/// Probe nonces remembered. The agent reports its nonce right after its
/// request came back, so a few suffice even if it retries.
pub const NONCES_KEPT: usize = 8;

/// Who plumbs the pod, for people reading a message (the DaemonSet's name
/// in `deploy/`).
const AGENT_HINT: &str = "is the kubevirt-imds-agent DaemonSet running on this node?";

/// Where the IMDS listener stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listener {
    /// The agent has not created [`SIDECAR_IF`] (yet, or any more).
    WaitingForInterface,
    /// The interface is there, but port [`IMDS_PORT`] is still privileged
    /// in this pod's network namespace.
    PortPrivileged,
    /// The interface is there, but binding failed for another reason
    /// (the interface vanished meanwhile, …); retried.
    BindFailed(String),
    Listening {
        addr: SocketAddrV4,
        ifindex: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Probed {
    node: Option<String>,
    at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeRefused {
    #[error("probe nonce {0:?} was never seen in a request through the data path (since the last bind)")]
    UnknownNonce(String),
    #[error("probe nonce is longer than {MAX_NONCE_LEN} bytes")]
    NonceTooLong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    listener: Listener,
    /// The node of the agent that introduced itself last.
    agent_node: Option<String>,
    /// Oldest first.
    nonces: VecDeque<String>,
    probed: Option<Probed>,
    served: u64,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            listener: Listener::WaitingForInterface,
            agent_node: None,
            nonces: VecDeque::with_capacity(NONCES_KEPT),
            probed: None,
            served: 0,
        }
    }
}

impl Readiness {
    /// Records where the listener stands. Any change but to the very same
    /// listener forgets the nonces and the probe: they proved the old one.
    pub fn set_listener(&mut self, listener: Listener) {
        if self.listener != listener {
            self.nonces.clear();
            self.probed = None;
            self.listener = listener;
        }
    }

    pub fn listener(&self) -> &Listener {
        &self.listener
    }

    pub fn agent_hello(&mut self, node: &str) {
        if self.agent_node.as_deref() != Some(node) {
            self.agent_node = Some(node.to_owned());
        }
    }

    /// One request answered; `probe_nonce` is its [`channel::PROBE_HEADER`]
    /// value, if it had one. Empty or overlong nonces are not kept.
    pub fn request_served(&mut self, probe_nonce: Option<&str>) {
        self.served = self.served.saturating_add(1);
        let Some(nonce) = probe_nonce.filter(|n| !n.is_empty() && n.len() <= MAX_NONCE_LEN) else {
            return;
        };
        if self.nonces.len() == NONCES_KEPT {
            self.nonces.pop_front();
        }
        self.nonces.push_back(nonce.to_owned());
    }

    /// The agent says the request carrying `nonce` went through the data
    /// path and back. Each nonce counts once. `Ok(true)` when this made the
    /// sidecar ready.
    pub fn probe_succeeded(
        &mut self,
        nonce: &str,
        node: Option<&str>,
        now: SystemTime,
    ) -> Result<bool, ProbeRefused> {
        if nonce.len() > MAX_NONCE_LEN {
            return Err(ProbeRefused::NonceTooLong);
        }
        let position = self.nonces.iter().position(|n| n == nonce);
        let Some(position) = position else {
            return Err(ProbeRefused::UnknownNonce(nonce.to_owned()));
        };
        self.nonces.remove(position);
        let was_ready = self.is_ready();
        let node = node.map(str::to_owned).or_else(|| self.agent_node.clone());
        self.probed = Some(Probed { node, at: now });
        Ok(!was_ready && self.is_ready())
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.listener, Listener::Listening { .. }) && self.probed.is_some()
    }

    pub fn served(&self) -> u64 {
        self.served
    }

    /// What the startup probe is told.
    pub fn status(&self) -> channel::Status {
        channel::Status {
            ready: self.is_ready(),
            message: self.message(),
            agent_node: self.agent_node.clone(),
            served: self.served,
        }
    }

    /// One line for a person: what is missing, or since when it works.
    pub fn message(&self) -> String {
        let agent = match &self.agent_node {
            Some(node) => format!("the kubevirt-imds agent on node {node}"),
            None => "the kubevirt-imds agent".to_owned(),
        };
        match (&self.listener, &self.probed) {
            (Listener::WaitingForInterface, _) => match &self.agent_node {
                None => format!(
                    "no interface {SIDECAR_IF} in this pod yet: \
                     the kubevirt-imds agent has not plumbed it ({AGENT_HINT})"
                ),
                Some(_) => format!(
                    "no interface {SIDECAR_IF} in this pod yet: \
                     {agent} connected but has not plumbed it (see its log)"
                ),
            },
            (Listener::PortPrivileged, _) => format!(
                "interface {SIDECAR_IF} is there, but port {IMDS_PORT} is still privileged in this pod: \
                 waiting for {agent} to set net.ipv4.ip_unprivileged_port_start to 0"
            ),
            (Listener::BindFailed(reason), _) => {
                format!("interface {SIDECAR_IF} is there, but listening on it failed ({reason}); retrying")
            }
            (Listener::Listening { addr, .. }, None) => match &self.agent_node {
                None => format!(
                    "listening on {addr}, waiting for the agent's probe through the data path \
                     (no kubevirt-imds agent has connected yet: {AGENT_HINT})"
                ),
                Some(_) => format!(
                    "listening on {addr}, waiting for the agent's probe through the data path \
                     ({agent} connected)"
                ),
            },
            (Listener::Listening { .. }, Some(probed)) => {
                let by = match &probed.node {
                    Some(node) => format!("the agent on node {node}"),
                    None => "the kubevirt-imds agent".to_owned(),
                };
                let at = humantime::format_rfc3339_seconds(probed.at);
                format!("serving: {by} probed the data path at {at}")
            }
        }
    }
}

/// [`Readiness`] shared by the tasks that feed and read it. Every access is
/// a few field updates, so a plain mutex held for no await.
#[derive(Debug, Clone, Default)]
pub struct SharedReadiness(Arc<Mutex<Readiness>>);

impl SharedReadiness {
    pub fn update<R>(&self, change: impl FnOnce(&mut Readiness) -> R) -> R {
        // A panic elsewhere while holding the lock leaves plain fields
        // behind, never a broken invariant worth refusing to serve over.
        change(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn status(&self) -> channel::Status {
        self.update(|r| r.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const ADDR: SocketAddrV4 = SocketAddrV4::new(imds_common::contract::IMDS_IP, IMDS_PORT);
    const AT: Duration = Duration::from_secs(1_795_000_000);

    fn listening(ifindex: u32) -> Listener {
        Listener::Listening { addr: ADDR, ifindex }
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + AT
    }

    #[test]
    fn from_start_to_serving_each_step_says_what_is_missing() {
        let mut r = Readiness::default();
        let s = r.status();
        assert!(!s.ready);
        assert!(s.message.starts_with("no interface imds-sidecar in this pod yet"), "{}", s.message);
        assert!(s.message.contains("kubevirt-imds-agent DaemonSet"), "{}", s.message);

        r.agent_hello("node-1");
        assert!(
            r.message().contains("agent on node node-1 connected but has not plumbed"),
            "{}",
            r.message()
        );
        assert_eq!(r.status().agent_node.as_deref(), Some("node-1"));

        r.set_listener(Listener::PortPrivileged);
        assert!(r.message().contains("ip_unprivileged_port_start"), "{}", r.message());
        assert!(!r.is_ready());

        r.set_listener(listening(7));
        assert_eq!(
            r.message(),
            "listening on 169.254.169.254:80, waiting for the agent's probe through the data path \
             (the kubevirt-imds agent on node node-1 connected)"
        );
        assert!(!r.is_ready());

        r.request_served(Some("n-1"));
        assert_eq!(r.probe_succeeded("n-1", Some("node-1"), at()), Ok(true));
        let s = r.status();
        assert!(s.ready);
        assert_eq!(
            s.message,
            "serving: the agent on node node-1 probed the data path at 2026-11-18T11:06:40Z"
        );
        assert_eq!(s.served, 1);
    }

    #[test]
    fn only_nonces_seen_through_the_data_path_count_and_each_once() {
        let mut r = Readiness::default();
        r.set_listener(listening(7));
        assert_eq!(r.probe_succeeded("never", None, at()), Err(ProbeRefused::UnknownNonce("never".into())));
        assert!(!r.is_ready());

        r.request_served(Some("n-1"));
        assert_eq!(r.probe_succeeded("n-1", None, at()), Ok(true));
        assert!(r.is_ready());
        // A replay is refused and changes nothing; a second fresh probe is
        // accepted but does not make it "newly" ready.
        assert!(matches!(r.probe_succeeded("n-1", None, at()), Err(ProbeRefused::UnknownNonce(_))));
        assert!(r.is_ready());
        r.request_served(Some("n-2"));
        assert_eq!(r.probe_succeeded("n-2", None, at()), Ok(false));
        assert!(r.message().starts_with("serving: the kubevirt-imds agent probed"), "{}", r.message());
    }

    #[test]
    fn only_the_last_few_well_formed_nonces_are_kept() {
        let mut r = Readiness::default();
        r.set_listener(listening(7));
        let long = "n".repeat(MAX_NONCE_LEN + 1);
        r.request_served(Some(&long));
        r.request_served(Some(""));
        r.request_served(None);
        for i in 0..=NONCES_KEPT {
            r.request_served(Some(&format!("n-{i}")));
        }
        assert_eq!(r.served(), 3 + NONCES_KEPT as u64 + 1);
        assert_eq!(r.probe_succeeded(&long, None, at()), Err(ProbeRefused::NonceTooLong));
        assert!(r.probe_succeeded("", None, at()).is_err());
        assert!(r.probe_succeeded("n-0", None, at()).is_err(), "the oldest was evicted");
        assert_eq!(r.probe_succeeded(&format!("n-{NONCES_KEPT}"), None, at()), Ok(true));
        let exact = "n".repeat(MAX_NONCE_LEN);
        r.request_served(Some(&exact));
        assert_eq!(r.probe_succeeded(&exact, None, at()), Ok(false));
    }

    #[test]
    fn a_new_listener_must_be_probed_again() {
        let mut r = Readiness::default();
        r.set_listener(listening(7));
        r.request_served(Some("old"));
        r.request_served(Some("proved"));
        r.probe_succeeded("proved", None, at()).unwrap();

        // The same listener reported again changes nothing.
        r.set_listener(listening(7));
        assert!(r.is_ready());

        // The agent recreated the veth: ready no more, old nonces useless.
        r.set_listener(listening(9));
        assert!(!r.is_ready());
        assert!(r.probe_succeeded("old", None, at()).is_err());

        r.request_served(Some("new"));
        r.set_listener(Listener::WaitingForInterface);
        assert!(r.probe_succeeded("new", None, at()).is_err());
        assert!(r.message().starts_with("no interface"), "{}", r.message());
        assert_eq!(r.served(), 3, "the count survives rebinds");
    }

    #[test]
    fn bind_failures_are_named() {
        let mut r = Readiness::default();
        r.set_listener(Listener::BindFailed("No such device (os error 19)".into()));
        assert!(r.message().contains("No such device"), "{}", r.message());
        assert_eq!(r.listener(), &Listener::BindFailed("No such device (os error 19)".into()));
    }

    #[test]
    fn the_shared_state_is_one_state() {
        let shared = SharedReadiness::default();
        let other = shared.clone();
        other.update(|r| r.request_served(None));
        assert_eq!(shared.status().served, 1);
    }
}
