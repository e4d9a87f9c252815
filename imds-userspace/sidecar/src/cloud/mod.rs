//! Cloud metadata formats that stock images already speak: NoCloud over
//! HTTP, the OpenStack metadata service and the EC2 instance metadata
//! service (with IMDSv2 sessions). Each flavour is a pure path resolver
//! over the same facts; [`crate::api::cloud`] serves them.
//!
//! They serve metadata and user-data only: the ServiceAccount token stays
//! on `/v1/token`, behind `Metadata: true`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::contract;

pub mod data;
pub mod ec2;
pub mod imdsv2;
pub mod nocloud;
pub mod openstack;
pub mod ssh_keys;

/// What every flavour tells the guest about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    /// The VM's firmware UUID, as KubeVirt's own cloud-init disks give it
    /// (`pkg/cloud-init/cloud-init.go`: NoCloud's `instance-id` and
    /// ConfigDrive's `uuid` are `cloudInitUUIDFromVMI`): a VM moved from
    /// KubeVirt's disk to this IMDS keeps its instance-id, and cloud-init
    /// does not run first boot again. `<vm>.<namespace>` when no UUID was
    /// given (only outside the webhook: development, benchmarks).
    pub instance_id: String,
    pub hostname: String,
    pub vm_name: String,
    pub namespace: String,
    /// EC2's `placement/region` and the identity document's `region`.
    pub region: String,
    /// EC2's `placement/availability-zone`, OpenStack's `availability_zone`.
    pub availability_zone: String,
    /// SSH keys offered to the guest, as NoCloud's `public-keys`, EC2's
    /// `meta-data/public-keys/` and OpenStack's `public_keys`/`keys`.
    /// Filled per request from the Secret volumes ([`ssh_keys`]).
    pub public_keys: Vec<PublicKey>,
}

impl InstanceFacts {
    /// Facts with the default placement (see [`Self::with_placement`]) and no keys.
    pub fn new(vm_name: &str, namespace: &str, hostname: Option<&str>) -> Self {
        Self {
            instance_id: format!("{vm_name}.{namespace}"),
            hostname: hostname.unwrap_or(vm_name).to_owned(),
            vm_name: vm_name.to_owned(),
            namespace: namespace.to_owned(),
            region: contract::DEFAULT_REGION.to_owned(),
            availability_zone: contract::DEFAULT_AVAILABILITY_ZONE.to_owned(),
            public_keys: Vec::new(),
        }
    }

    /// The instance-id from the firmware UUID, when there is one.
    pub fn with_firmware_uuid(self, firmware_uuid: Option<&str>) -> Self {
        match firmware_uuid {
            Some(uuid) => Self { instance_id: uuid.to_owned(), ..self },
            None => self,
        }
    }

    pub fn with_placement(self, region: &str, availability_zone: &str) -> Self {
        Self { region: region.to_owned(), availability_zone: availability_zone.to_owned(), ..self }
    }
}

/// One SSH public key, as the EC2 and OpenStack services name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The key pair's name (EC2 lists `N=name`). One line, no `=`: whoever
    /// fills [`InstanceFacts::public_keys`] must check that.
    pub name: String,
    /// `ssh-ed25519 AAAA… comment`, one line.
    pub openssh_key: String,
}

/// What the resolvers know about who asked: facts of the request, passed
/// in by the API layer (the resolvers never read a socket).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Client {
    /// The guest's own IPv4 address, as the server saw the connection: the
    /// eBPF redirect does no NAT, so it is the address the guest has.
    /// `None` when unknown (in-process callers, an IPv6 peer).
    pub ipv4: Option<Ipv4Addr>,
}

impl Client {
    pub fn from_peer(peer: SocketAddr) -> Self {
        let ipv4 = match peer.ip() {
            IpAddr::V4(v4) => Some(v4),
            // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
            IpAddr::V6(v6) => v6.to_ipv4_mapped(),
        };
        Self { ipv4 }
    }
}

/// A request path as segments, for the resolvers: `/latest/meta-data/` →
/// `["latest", "meta-data"]` with `trailing_slash`. Never decoded: nothing
/// here is a file path, and `%2e%2e` simply matches nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segments<'a> {
    pub parts: Vec<&'a str>,
    pub trailing_slash: bool,
}

impl<'a> Segments<'a> {
    /// `None` for paths no resolver accepts: empty segments (`//`).
    pub fn parse(path: &'a str) -> Option<Self> {
        let rest = path.strip_prefix('/')?;
        if rest.is_empty() {
            return Some(Self { parts: Vec::new(), trailing_slash: true });
        }
        let trailing_slash = rest.ends_with('/');
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return None;
        }
        Some(Self { parts, trailing_slash })
    }
}

/// What a path of one of the flavours designates; the API layer reads the
/// data sources and renders it.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// A listing or a leaf value, `text/plain`.
    Text(String),
    /// A JSON document.
    Json(serde_json::Value),
    /// The raw user-data; when there is none, `Missing` says how to answer.
    UserData(Missing),
    /// The raw vendor-data (NoCloud).
    VendorData(Missing),
    /// OpenStack's `vendor_data.json`: `{"cloud-init": <vendor-data>}`, or `{}`.
    VendorDataJson,
    /// NoCloud's `network-config`, as given; an empty 200 when there is none
    /// (cloud-init 25.1 retries a 404 ten times, about 10 s of every boot,
    /// and reads an empty body as "no network config", the same as a 404).
    NetworkConfig,
    /// OpenStack's `network_data.json`: the network data if it is that JSON
    /// format (KubeVirt's ConfigDrive networkData), else 404.
    NetworkDataJson,
    /// OpenStack's `password`, whatever the method: 404, this service
    /// stores no passwords (see [`openstack::PASSWORD_VERSION`]).
    PasswordNotStored,
}

/// How to answer for data that is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    NotFound,
    /// An empty 200: cloud-init's NoCloud seed retries a 404 for seconds.
    Empty,
}

/// A directory listing, one entry per line, as the EC2 and OpenStack
/// services write them (directories end in `/`).
pub fn listing<S: std::borrow::Borrow<str>>(entries: &[S]) -> String {
    entries.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_the_firmware_uuid_when_given() {
        let uuid = "5a9fc181-957e-5c32-9e5a-2de5e9673531";
        let f = InstanceFacts::new("fedora", "vms", None).with_firmware_uuid(Some(uuid));
        assert_eq!(f.instance_id, uuid);
        assert_eq!(
            InstanceFacts::new("fedora", "vms", None).with_firmware_uuid(None).instance_id,
            "fedora.vms"
        );
    }

    #[test]
    fn instance_id_follows_kubevirt() {
        let f = InstanceFacts::new("fedora", "vms", None);
        assert_eq!((f.instance_id.as_str(), f.hostname.as_str()), ("fedora.vms", "fedora"));
        assert_eq!(InstanceFacts::new("fedora", "vms", Some("web-1")).hostname, "web-1");
        assert_eq!((f.region.as_str(), f.availability_zone.as_str()), ("kubevirt", "kubevirt"));
        let placed = f.with_placement("us-east-1", "us-east-1a");
        assert_eq!((placed.region.as_str(), placed.availability_zone.as_str()), ("us-east-1", "us-east-1a"));
        assert_eq!(placed.instance_id, "fedora.vms");
    }

    #[test]
    fn client_address_from_the_peer() {
        let v4: SocketAddr = "10.0.2.2:41000".parse().unwrap();
        assert_eq!(Client::from_peer(v4).ipv4, Some(Ipv4Addr::new(10, 0, 2, 2)));
        let mapped: SocketAddr = "[::ffff:10.0.2.2]:41000".parse().unwrap();
        assert_eq!(Client::from_peer(mapped).ipv4, Some(Ipv4Addr::new(10, 0, 2, 2)));
        let v6: SocketAddr = "[fd10:0:2::2]:41000".parse().unwrap();
        assert_eq!(Client::from_peer(v6).ipv4, None);
    }

    #[test]
    fn segments() {
        assert_eq!(Segments::parse("/"), Some(Segments { parts: vec![], trailing_slash: true }));
        assert_eq!(
            Segments::parse("/latest/meta-data/"),
            Some(Segments { parts: vec!["latest", "meta-data"], trailing_slash: true })
        );
        assert_eq!(
            Segments::parse("/latest/meta-data/instance-id"),
            Some(Segments { parts: vec!["latest", "meta-data", "instance-id"], trailing_slash: false })
        );
        assert_eq!(Segments::parse("/latest//meta-data"), None);
        assert_eq!(Segments::parse("//"), None);
        assert_eq!(Segments::parse("no-slash"), None);
        assert_eq!(Segments::parse("/a/../b").unwrap().parts, vec!["a", "..", "b"]);
    }
}
