//! The IMDS listening socket, bound to the agent's veth end
//! ([`crate::contract::SIDECAR_IF`]).
//!
//! Binding to the device does not keep the pod's own processes out: a
//! process in the pod connecting to 169.254.169.254 goes over loopback with
//! the veth as its nominal interface and would match. The node agent keeps
//! them out with a program on the pod's loopback (`imds_from_pod`), which
//! drops every packet for the IMDS address there, so what reaches this
//! socket arrived through the veth: what the data path redirected from a
//! VM. (A classic BPF socket filter on the arrival interface would do the
//! same from here, but some kernels refuse one to a process without
//! CAP_NET_ADMIN, and the sidecar has none.)
//!
//! None of it takes a capability: SO_BINDTODEVICE on a socket not yet bound
//! to a device (Linux ≥ 5.7) and IP_FREEBIND (so the bind does not depend
//! on the agent having added the address yet) are open to any user. Only
//! the port is privileged, until the agent lowers
//! `net.ipv4.ip_unprivileged_port_start` in the pod's network namespace.

use std::{fmt, io, net::SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

/// The step of [`bind`] that failed: what the caller can do about an
/// error depends on it (EPERM from SO_BINDTODEVICE is an old kernel,
/// EACCES from `bind` a port the agent has not opened yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindStep {
    Socket,
    Options,
    Device,
    Bind,
    Listen,
}

impl fmt::Display for BindStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BindStep::Socket => "creating the socket",
            BindStep::Options => "setting SO_REUSEADDR, IP_FREEBIND and IP_TTL",
            BindStep::Device => "binding to the device (SO_BINDTODEVICE)",
            BindStep::Bind => "binding the address",
            BindStep::Listen => "listening",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("listening on {addr} through {device}: {step}")]
pub struct BindError {
    pub step: BindStep,
    pub addr: SocketAddrV4,
    pub device: String,
    #[source]
    pub source: io::Error,
}

/// Listens on `addr`, bound to `device`, sending with IP TTL `hop_limit`
/// (accepted connections inherit it, and the kernel uses it for the
/// SYN-ACK already). Must run inside the tokio runtime.
pub fn bind(addr: SocketAddrV4, device: &str, hop_limit: u8) -> Result<TcpListener, BindError> {
    let error = |step| move |source| BindError { step, addr, device: device.to_owned(), source };
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(error(BindStep::Socket))?;
    socket.set_reuse_address(true).map_err(error(BindStep::Options))?;
    socket.set_freebind_v4(true).map_err(error(BindStep::Options))?;
    socket.set_ttl_v4(u32::from(hop_limit)).map_err(error(BindStep::Options))?;
    socket.bind_device(Some(device.as_bytes())).map_err(error(BindStep::Device))?;
    socket.bind(&addr.into()).map_err(error(BindStep::Bind))?;
    socket.listen(1024).map_err(error(BindStep::Listen))?;
    socket.set_nonblocking(true).map_err(error(BindStep::Listen))?;
    TcpListener::from_std(socket.into()).map_err(error(BindStep::Listen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_an_address_not_yet_assigned_to_a_device_without_privileges() {
        // Port 0: any user may bind it; IP_FREEBIND lets the IMDS address
        // be bound before any interface of this namespace holds it.
        let addr = SocketAddrV4::new(imds_common::contract::IMDS_IP, 0);
        let listener = bind(addr, "lo", 1).unwrap();
        let bound = listener.local_addr().unwrap();
        assert_eq!(bound.ip(), std::net::IpAddr::from(imds_common::contract::IMDS_IP));
        assert_eq!(socket2::SockRef::from(&listener).ttl_v4().unwrap(), 1);
    }

    #[tokio::test]
    async fn errors_name_the_failing_step() {
        // No such device: SO_BINDTODEVICE fails (ENODEV), whatever the privileges.
        let addr = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0);
        let err = bind(addr, "imds-nonexist0", 1).unwrap_err();
        assert_eq!(err.step, BindStep::Device, "{err}");
        assert_eq!(err.source.raw_os_error(), Some(libc::ENODEV), "{err}");
        assert!(err.to_string().contains("imds-nonexist0"), "{err}");
    }
}
