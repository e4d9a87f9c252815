//! The end-to-end check that a guest would be served, before any guest
//! exists: a veth plays the VM's TAP. Its pod end carries the pod's own
//! `imds_from_guest`, its other end sits in a namespace of the agent's own
//! (so nothing of the pod's or the node's routing is involved) and sends
//! `GET /healthz` to 169.254.169.254 with a nonce in
//! [`channel::PROBE_HEADER`]. The request goes through the redirect, the
//! veth and the sidecar's listener; the answer through `imds_to_guest` and
//! the flow table, back out of the fake TAP. Then the sidecar is told the
//! nonce ([`channel::Request::ProbeSucceeded`]) and only then reports ready,
//! which is what lets the kubelet start the VM.
//!
//! ```text
//! probe namespace              pod namespace
//! imds-probe-g 192.0.2.1 ═veth═ imds-probe ─ imds_from_guest ─► imds-redirect ═► imds-sidecar :80
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::Duration,
};

use futures_util::TryStreamExt as _;
use imds_common::{channel, contract};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder, packet_route::route::RouteScope};

use crate::{
    datapath::{loader::PodDatapath, plan::Role},
    net::{Context as _, NetlinkError, is_not_found},
    netns::{Netns, block_on_in},
};

/// The fake TAP in the pod (the agent's own prefix: never planned).
pub const PROBE_IF: &str = "imds-probe";
/// Its peer, in the probe namespace.
const PROBE_GUEST_IF: &str = "imds-probe-g";
/// The probe guest's address: TEST-NET-1 (RFC 5737), used by nothing real.
const PROBE_GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// One probe at a time: they share the probe namespace and its names.
static PROBE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("setting up the probe interface")]
    Netlink(#[from] NetlinkError),
    #[error("attaching imds_from_guest to the probe interface")]
    Attach(#[source] Box<crate::datapath::loader::DatapathError>),
    #[error("the probe namespace")]
    Netns(#[source] std::io::Error),
    #[error("the probe request: {0}")]
    Request(String),
}

/// Sends one probe through the pod's data path; returns the nonce the
/// sidecar saw. Runs on the pod's thread (inside its namespace).
pub async fn run(
    handle: &Handle,
    datapath: &mut PodDatapath,
    probe_netns: &Netns,
    nonce: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let _one_at_a_time = PROBE_LOCK.lock().await;
    remove(handle).await?;
    let outcome = exchange(handle, datapath, probe_netns, nonce, timeout).await;
    remove(handle).await?;
    outcome
}

async fn exchange(
    handle: &Handle,
    datapath: &mut PodDatapath,
    probe_netns: &Netns,
    nonce: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    handle
        .link()
        .add(LinkVeth::new(PROBE_IF, PROBE_GUEST_IF).build())
        .execute()
        .await
        .context(format!("creating veth pair {PROBE_IF}/{PROBE_GUEST_IF}"))?;
    let index = index_of(handle, PROBE_IF).await?.ok_or_else(|| vanished(PROBE_IF))?;
    let guest_index = index_of(handle, PROBE_GUEST_IF).await?.ok_or_else(|| vanished(PROBE_GUEST_IF))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(guest_index).setns_by_fd(probe_netns.raw_fd()).build())
        .execute()
        .await
        .context(format!("moving {PROBE_GUEST_IF} into the probe namespace"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context(format!("bringing {PROBE_IF} up"))?;
    let _attached =
        datapath.attach_unpinned(Role::FromGuest, PROBE_IF).map_err(|e| ProbeError::Attach(Box::new(e)))?;

    block_on_in(probe_netns, || async {
        let (connection, guest, _) = rtnetlink::new_connection().map_err(|e| NetlinkError {
            what: format!("opening rtnetlink in the probe namespace: {e}"),
            source: rtnetlink::Error::RequestFailed,
        })?;
        tokio::spawn(connection);
        configure_guest(&guest).await
    })
    .map_err(ProbeError::Netns)??;

    let nonce = nonce.to_owned();
    probe_netns.run(move || request(&nonce, timeout)).map_err(ProbeError::Netns)?
}

/// The probe guest: its address and a route to the IMDS through the fake TAP.
async fn configure_guest(handle: &Handle) -> Result<(), NetlinkError> {
    let index = index_of(handle, PROBE_GUEST_IF).await?.ok_or_else(|| vanished(PROBE_GUEST_IF))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .context(format!("bringing {PROBE_GUEST_IF} up"))?;
    handle
        .address()
        .add(index, PROBE_GUEST_IP.into(), 32)
        .execute()
        .await
        .context(format!("adding {PROBE_GUEST_IP}/32 to {PROBE_GUEST_IF}"))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(contract::IMDS_IP, 32)
        .output_interface(index)
        .pref_source(PROBE_GUEST_IP)
        .scope(RouteScope::Link)
        .build();
    handle.route().add(route).execute().await.context("adding the probe guest's route to the IMDS")?;
    Ok(())
}

/// `GET /healthz` with the nonce, from the probe namespace; blocking.
fn request(nonce: &str, timeout: Duration) -> Result<(), ProbeError> {
    let addr = SocketAddrV4::new(contract::IMDS_IP, contract::IMDS_PORT);
    let failed = |what: &str, e: std::io::Error| ProbeError::Request(format!("{what} {addr}: {e}"));
    let mut stream =
        TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| failed("connecting to", e))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| failed("configuring", e))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| failed("configuring", e))?;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\n{}: {nonce}\r\nConnection: close\r\n\r\n",
        contract::IMDS_IP,
        channel::PROBE_HEADER
    );
    stream.write_all(request.as_bytes()).map_err(|e| failed("writing to", e))?;
    let mut answer = Vec::new();
    stream.take(4096).read_to_end(&mut answer).map_err(|e| failed("reading from", e))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nOK") {
        Ok(())
    } else {
        Err(ProbeError::Request(format!(
            "unexpected answer from {addr}: {:?}",
            text.chars().take(200).collect::<String>()
        )))
    }
}

/// Removes the probe interface (and so its peer) if it is there.
async fn remove(handle: &Handle) -> Result<(), NetlinkError> {
    if let Some(index) = index_of(handle, PROBE_IF).await?
        && let Err(e) = handle.link().del(index).execute().await
        && !is_not_found(&e)
    {
        return Err(e).context(format!("deleting {PROBE_IF}"));
    }
    Ok(())
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    match handle.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(found) => Ok(found.map(|m| m.header.index)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e).context(format!("looking up link {name}")),
    }
}

fn vanished(name: &str) -> NetlinkError {
    NetlinkError {
        what: format!("link {name} vanished right after it was created"),
        source: rtnetlink::Error::RequestFailed,
    }
}
