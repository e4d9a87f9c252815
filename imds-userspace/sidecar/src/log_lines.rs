//! The log messages other code waits for (the test harness, xtask), defined
//! once. Each is the whole `message` of its event; details are fields.

/// The channel socket is bound: the agent and the startup probe can connect.
/// Field: `socket`.
pub const LOG_CHANNEL_LISTENING: &str = "channel listening";

/// The IMDS listener is bound on the agent's veth end (after every rebind
/// too). Guests are served once the agent has also probed the data path
/// ([`LOG_READY`]). Fields: `addr`, `interface`, `ifindex`.
pub const LOG_SERVING: &str = "IMDS listening";

/// The agent's probe came back through the data path: the startup probe now
/// succeeds.
pub const LOG_READY: &str = "the data path answered the agent's probe: serving guests";

/// The `serve` subcommand is listening (no data path). Field: `listen`.
pub const LOG_SERVING_PLAIN: &str = "IMDS API serving (no data path)";

/// An agent introduced itself on a new channel connection.
pub fn agent_connected(node: &str) -> String {
    format!("the kubevirt-imds agent on node {node} connected")
}
