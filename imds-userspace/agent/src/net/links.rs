//! The pod's links as the attachment planner sees them, and a stream of
//! "something changed" notifications from the kernel.

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::{StreamExt as _, TryStreamExt as _};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{
    Handle,
    constants::RTMGRP_LINK,
    packet_core::NetlinkMessage,
    packet_route::{
        RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    },
};

use super::{Context as _, NetlinkError};

/// One network interface of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSummary {
    pub index: u32,
    pub name: String,
    pub is_bridge: bool,
    /// ifindex of the bridge this link is a port of.
    pub controller: Option<u32>,
}

impl LinkSummary {
    pub fn from_message(message: &LinkMessage) -> Option<Self> {
        let mut name = None;
        let mut is_bridge = false;
        let mut controller = None;
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::Controller(c) => controller = Some(*c),
                LinkAttribute::LinkInfo(infos) => {
                    is_bridge |= infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
                }
                _ => {}
            }
        }
        Some(Self { index: message.header.index, name: name?, is_bridge, controller })
    }
}

/// Every link of the network namespace.
pub async fn dump(handle: &Handle) -> Result<Vec<LinkSummary>, NetlinkError> {
    let messages: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.context("listing links")?;
    Ok(messages.iter().filter_map(LinkSummary::from_message).collect())
}

/// Link events (created, changed, enslaved, deleted) of the namespace.
/// Callers re-read the whole link table on each wake-up rather than
/// trusting individual events, so a lost or coalesced event cannot leave an
/// interface unattached. Dropping it closes the subscription.
pub struct LinkEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>,
    connection: tokio::task::JoinHandle<()>,
}

impl LinkEvents {
    pub fn subscribe() -> std::io::Result<Self> {
        let (mut connection, _handle, messages) = rtnetlink::new_connection()?;
        let groups = netlink_sys::SocketAddr::new(0, RTMGRP_LINK);
        connection.socket_mut().socket_mut().bind(&groups)?;
        Ok(Self { messages, connection: tokio::spawn(connection) })
    }

    /// Waits for the next event, then swallows the rest of its burst (a TAP
    /// is created, enslaved and brought up in quick succession). `None`
    /// when the subscription broke.
    pub async fn changed(&mut self) -> Option<()> {
        self.messages.next().await?;
        while self.messages.try_recv().is_ok() {}
        Some(())
    }
}

impl Drop for LinkEvents {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::LinkHeader;

    fn message(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header = LinkHeader { index, ..LinkHeader::default() };
        m.attributes = attributes;
        m
    }

    #[test]
    fn summarises_bridges_and_ports() {
        let bridge = message(
            4,
            vec![
                LinkAttribute::IfName("k6t-eth0".into()),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
            ],
        );
        assert_eq!(
            LinkSummary::from_message(&bridge),
            Some(LinkSummary { index: 4, name: "k6t-eth0".into(), is_bridge: true, controller: None })
        );
        let tap = message(
            5,
            vec![
                LinkAttribute::IfName("tap0".into()),
                LinkAttribute::Controller(4),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Tun)]),
            ],
        );
        assert_eq!(
            LinkSummary::from_message(&tap),
            Some(LinkSummary { index: 5, name: "tap0".into(), is_bridge: false, controller: Some(4) })
        );
        assert_eq!(LinkSummary::from_message(&message(6, vec![])), None);
    }
}
