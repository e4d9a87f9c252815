//! Cloud metadata formats that stock images already speak: NoCloud over
//! HTTP, the OpenStack metadata service and the EC2 instance metadata
//! service (with IMDSv2 sessions). Each flavour is a pure path resolver
//! over the same facts; [`crate::api::cloud`] serves them.
//!
//! They serve metadata and user-data only: the ServiceAccount token stays
//! on `/v1/token`, behind `Metadata: true`.

pub mod data;
pub mod ec2;
pub mod imdsv2;
pub mod nocloud;
pub mod openstack;

/// What every flavour tells the guest about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    /// `<vm>.<namespace>`: KubeVirt's own NoCloud convention, stable across
    /// restarts of one VM and different between VMs.
    pub instance_id: String,
    pub hostname: String,
    pub vm_name: String,
    pub namespace: String,
}

impl InstanceFacts {
    pub fn new(vm_name: &str, namespace: &str, hostname: Option<&str>) -> Self {
        Self {
            instance_id: format!("{vm_name}.{namespace}"),
            hostname: hostname.unwrap_or(vm_name).to_owned(),
            vm_name: vm_name.to_owned(),
            namespace: namespace.to_owned(),
        }
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
    /// NoCloud's `network-config`, as given; 404 when there is none.
    NetworkConfig,
    /// OpenStack's `network_data.json`: the network data if it is that JSON
    /// format (KubeVirt's ConfigDrive networkData), else 404.
    NetworkDataJson,
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
pub fn listing(entries: &[&str]) -> String {
    entries.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_follows_kubevirt() {
        let f = InstanceFacts::new("fedora", "vms", None);
        assert_eq!((f.instance_id.as_str(), f.hostname.as_str()), ("fedora.vms", "fedora"));
        assert_eq!(InstanceFacts::new("fedora", "vms", Some("web-1")).hostname, "web-1");
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
