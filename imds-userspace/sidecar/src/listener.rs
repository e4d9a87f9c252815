//! The IMDS listening socket, which only accepts what arrived through the
//! sidecar's veth, i.e. what the eBPF program redirected from a VM.
//!
//! Binding to the device is not enough: a process in the pod connecting to
//! 169.254.169.254 is routed over loopback with the veth as its nominal
//! interface and would match. A classic BPF socket filter checks the real
//! arrival interface of every segment (for listeners it runs on the SYN).
//! The sidecar's own health probe, which does come over loopback, gets in
//! by carrying [`PROBE_MARK`]: setting a socket mark takes CAP_NET_ADMIN,
//! which no other container of a virt-launcher pod has.

use std::{io, net::SocketAddrV4};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};

/// The fwmark of the sidecar's own probe connections ("IMDS").
pub const PROBE_MARK: u32 = 0x494d_4453;

// Classic BPF opcodes and the ancillary-data offsets (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;
const SKF_AD_OFF: i32 = -0x1000;
const SKF_AD_IFINDEX: i32 = 8;
const SKF_AD_MARK: i32 = 20;

/// Accept a segment iff it arrived on `ifindex` or carries `mark`.
pub fn arrival_filter(ifindex: u32, mark: u32) -> [SockFilter; 6] {
    let ancillary = |field: i32| (SKF_AD_OFF + field) as u32;
    [
        SockFilter::new(LD_W_ABS, 0, 0, ancillary(SKF_AD_IFINDEX)),
        SockFilter::new(JEQ_K, 3, 0, ifindex), // -> accept
        SockFilter::new(LD_W_ABS, 0, 0, ancillary(SKF_AD_MARK)),
        SockFilter::new(JEQ_K, 1, 0, mark), // -> accept
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ]
}

/// Listens on `addr`, bound to `device` (ifindex `ifindex`).
pub fn bind(addr: SocketAddrV4, device: &str, ifindex: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind_device(Some(device.as_bytes()))?;
    socket.attach_filter(&arrival_filter(ifindex, PROBE_MARK))?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// An unconnected socket for the sidecar's own probe of the listener.
pub fn probe_socket(device: &str) -> io::Result<TcpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(PROBE_MARK)?;
    socket.bind_device(Some(device.as_bytes()))?;
    socket.set_nonblocking(true)?;
    Ok(TcpSocket::from_std_stream(socket.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The filter, on a loopback listener: segments from `lo` pass when the
    /// filter names lo's ifindex and are dropped when it names another.
    async fn connects_with_filter_for(ifindex: u32) -> bool {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.attach_filter(&arrival_filter(ifindex, PROBE_MARK)).unwrap();
        socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        socket.listen(8).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(socket.into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = tokio::net::TcpStream::connect(addr);
        matches!(tokio::time::timeout(Duration::from_millis(500), connect).await, Ok(Ok(_)))
    }

    #[tokio::test]
    async fn filter_admits_only_the_named_interface() {
        let lo = nix_if_nametoindex("lo");
        assert!(connects_with_filter_for(lo).await, "segments from lo were dropped");
        assert!(!connects_with_filter_for(lo + 1000).await, "segments from lo were admitted");
    }

    fn nix_if_nametoindex(name: &str) -> u32 {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }
}
