//! The sidecar's veth pair, its address and the policy route that sends
//! the server's replies back through it.
//!
//! ```text
//! imds-sidecar (169.254.169.254/32, NOARP) <──veth──> imds-redirect
//! ip rule 169: from 169.254.169.254 lookup 169254
//! table 169254: default dev imds-sidecar
//! ```
//! Replies must leave through the veth (where `imds_to_guest` hands them to
//! the right TAP) and not through the pod's routes: with the bridge binding
//! the pod has no route to the VM at all.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle, LinkUnspec, LinkVeth, RouteMessageBuilder,
    packet_route::{
        link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute},
        route::RouteScope,
        rule::{RuleAction, RuleAttribute},
    },
};

use super::{Context as _, NetlinkError, ROUTE_TABLE, RULE_PRIORITY, is_not_found};
use crate::contract::{REDIRECT_IF, SIDECAR_IF};

/// What the eBPF programs need to know about the veth pair.
#[derive(Debug, Clone, Copy)]
pub struct SidecarLink {
    pub sidecar_index: u32,
    pub redirect_index: u32,
    pub sidecar_mac: [u8; 6],
}

/// The veth pair, up, as it should be: what a previous agent made is kept
/// (a running VM's IMDS must not blink), a half-made pair is made anew. No
/// address yet: the programs that keep the pod's own processes and the
/// uplinks away from it go on first ([`ensure_address`] comes after).
pub async fn ensure_pair(handle: &Handle) -> Result<(SidecarLink, Ensured), NetlinkError> {
    let sidecar = index_of(handle, SIDECAR_IF).await?;
    let redirect = index_of(handle, REDIRECT_IF).await?;
    if let (Some(sidecar_index), Some(redirect_index)) = (sidecar, redirect) {
        let sidecar_mac = mac_of(handle, sidecar_index).await?;
        return Ok((SidecarLink { sidecar_index, redirect_index, sidecar_mac }, Ensured::Adopted));
    }
    remove(handle).await?;
    Ok((create(handle).await?, Ensured::Created))
}

/// The IMDS address on the sidecar's end, and the route and rule that send
/// the server's replies back through the veth; what is there is kept.
pub async fn ensure_address(handle: &Handle, link: &SidecarLink, addr: Ipv4Addr) -> Result<(), NetlinkError> {
    if !has_address(handle, link.sidecar_index, addr).await? {
        handle
            .address()
            .add(link.sidecar_index, IpAddr::V4(addr), 32)
            .execute()
            .await
            .context(format!("adding {addr}/32 to {SIDECAR_IF}"))?;
    }
    ensure_route_and_rule(handle, link.sidecar_index, addr).await
}

/// Whether [`ensure`] found the pair or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Adopted,
    Created,
}

/// Removes the veth pair (with its address and table route) and the rule.
pub async fn remove(handle: &Handle) -> Result<(), NetlinkError> {
    for name in [SIDECAR_IF, REDIRECT_IF] {
        if let Some(index) = index_of(handle, name).await? {
            match handle.link().del(index).execute().await {
                Err(e) if !is_not_found(&e) => {
                    return Err(e).context(format!("deleting link {name}"));
                }
                _ => tracing::info!(link = name, "removed link"),
            }
        }
    }
    for rule in our_rules(handle).await? {
        match handle.rule().del(rule).execute().await {
            Err(e) if !is_not_found(&e) => return Err(e).context("deleting ip rule"),
            _ => tracing::info!(priority = RULE_PRIORITY, "removed ip rule"),
        }
    }
    Ok(())
}

async fn our_rules(handle: &Handle) -> Result<Vec<rtnetlink::packet_route::rule::RuleMessage>, NetlinkError> {
    let rules: Vec<_> = handle
        .rule()
        .get(rtnetlink::IpVersion::V4)
        .execute()
        .try_collect()
        .await
        .context("listing ip rules")?;
    Ok(rules
        .into_iter()
        .filter(|rule| {
            rule.attributes.contains(&RuleAttribute::Priority(RULE_PRIORITY))
                && rule.attributes.contains(&RuleAttribute::Table(ROUTE_TABLE))
        })
        .collect())
}

async fn has_address(handle: &Handle, index: u32, addr: Ipv4Addr) -> Result<bool, NetlinkError> {
    let addresses: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .context(format!("listing the addresses of {SIDECAR_IF}"))?;
    Ok(addresses.iter().any(|m| {
        m.attributes.iter().any(|a| {
            matches!(a, rtnetlink::packet_route::address::AddressAttribute::Address(IpAddr::V4(a)) if *a == addr)
        })
    }))
}

/// The table route and the rule, added if missing (`EEXIST` is fine).
async fn ensure_route_and_rule(
    handle: &Handle,
    sidecar_index: u32,
    addr: Ipv4Addr,
) -> Result<(), NetlinkError> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(sidecar_index)
        .scope(RouteScope::Link)
        .table_id(ROUTE_TABLE)
        .build();
    if let Err(e) = handle.route().add(route).execute().await
        && !is_exists(&e)
    {
        return Err(e).context(format!("adding default route via {SIDECAR_IF} to table {ROUTE_TABLE}"));
    }
    if our_rules(handle).await?.is_empty() {
        add_rule(handle, addr).await?;
    }
    Ok(())
}

async fn add_rule(handle: &Handle, addr: Ipv4Addr) -> Result<(), NetlinkError> {
    handle
        .rule()
        .add()
        .v4()
        .source_prefix(addr, 32)
        .table_id(ROUTE_TABLE)
        .priority(RULE_PRIORITY)
        .action(RuleAction::ToTable)
        .execute()
        .await
        .context(format!("adding ip rule from {addr} lookup {ROUTE_TABLE}"))
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(libc::EEXIST))
}

/// Creates the veth pair, up, without addresses.
async fn create(handle: &Handle) -> Result<SidecarLink, NetlinkError> {
    handle
        .link()
        .add(LinkVeth::new(SIDECAR_IF, REDIRECT_IF).build())
        .execute()
        .await
        .context(format!("creating veth pair {SIDECAR_IF}/{REDIRECT_IF}"))?;
    let sidecar_index = require_index(handle, SIDECAR_IF).await?;
    let redirect_index = require_index(handle, REDIRECT_IF).await?;

    for (name, index) in [(SIDECAR_IF, sidecar_index), (REDIRECT_IF, redirect_index)] {
        // No IPv6 link-local address, so the stack never sends router
        // solicitations or DAD probes into the data path.
        let no_ipv6 = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
            ])]))
            .build();
        if let Err(e) = handle.link().set(no_ipv6).execute().await {
            tracing::debug!(link = name, error = %e, "could not turn off IPv6 address generation");
        }
        // NOARP: the peer is not a neighbour but the eBPF program, which
        // forwards by flow; frames simply carry the sender's own MAC.
        let up = LinkUnspec::new_with_index(index).arp(false).up().build();
        handle.link().set(up).execute().await.context(format!("bringing {name} up"))?;
    }

    let sidecar_mac = mac_of(handle, sidecar_index).await?;
    Ok(SidecarLink { sidecar_index, redirect_index, sidecar_mac })
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    match handle.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(found) => Ok(found.map(|m| m.header.index)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e).context(format!("looking up link {name}")),
    }
}

async fn require_index(handle: &Handle, name: &str) -> Result<u32, NetlinkError> {
    index_of(handle, name).await?.ok_or_else(|| NetlinkError {
        what: format!("link {name} vanished right after it was created"),
        source: rtnetlink::Error::RequestFailed,
    })
}

async fn mac_of(handle: &Handle, index: u32) -> Result<[u8; 6], NetlinkError> {
    let link = handle
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_next()
        .await
        .context(format!("reading link {index}"))?;
    link.and_then(|l| {
        l.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
            _ => None,
        })
    })
    .ok_or_else(|| NetlinkError {
        what: format!("link {index} has no Ethernet address"),
        source: rtnetlink::Error::RequestFailed,
    })
}
