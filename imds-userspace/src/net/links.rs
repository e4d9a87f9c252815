//! The pod's links as the attachment planner sees them, and a stream of
//! "something changed" notifications from the kernel.

use futures_util::{Stream, StreamExt as _, TryStreamExt as _};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{
    Handle,
    constants::RTMGRP_LINK,
    packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
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

/// Yields once per link event (created, changed, enslaved, deleted). Callers
/// re-read the whole link table rather than trusting individual events, so a
/// lost or coalesced event cannot leave an interface unattached.
pub fn watch() -> std::io::Result<impl Stream<Item = ()>> {
    let (mut connection, _handle, messages) = rtnetlink::new_connection()?;
    let groups = netlink_sys::SocketAddr::new(0, RTMGRP_LINK);
    connection.socket_mut().socket_mut().bind(&groups)?;
    tokio::spawn(connection);
    Ok(messages.map(|_| ()))
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
            vec![LinkAttribute::IfName("k6t-eth0".into()), LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)])],
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
