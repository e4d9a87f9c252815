//! Everything the agent does in a pod through rtnetlink and sysctls.

pub mod links;
pub mod sidecar_link;
pub mod sysctl;
pub mod tc_filters;
/// Routing table for traffic sourced from the IMDS address (`ip route show table 169254`).
pub const ROUTE_TABLE: u32 = 169_254;
/// Priority of the rule selecting [`ROUTE_TABLE`]; before `main` (32766).
pub const RULE_PRIORITY: u32 = 169;

#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct NetlinkError {
    pub what: String,
    #[source]
    pub source: rtnetlink::Error,
}

pub(crate) trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, NetlinkError>;
}

impl<T> Context<T> for Result<T, rtnetlink::Error> {
    fn context(self, what: impl Into<String>) -> Result<T, NetlinkError> {
        self.map_err(|source| NetlinkError { what: what.into(), source })
    }
}

/// True for the kernel's "no such object" answers, which cleanup ignores.
pub(crate) fn is_not_found(e: &rtnetlink::Error) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            matches!(m.to_io().raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::ESRCH))
        }
        _ => false,
    }
}
