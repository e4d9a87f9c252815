//! NoCloud over HTTP: the SMBIOS serial [`SEED_SERIAL`] (or the same token
//! on the kernel command line) makes cloud-init's NoCloud datasource read
//! `meta-data`, `user-data` and `vendor-data` here (newer releases also
//! `network-config`).

use super::{InstanceFacts, Missing, Resource, Segments, listing};

pub const PREFIX: &str = "nocloud";

pub use crate::contract::SEED_SERIAL;

pub fn resolve(path: &Segments, facts: &InstanceFacts) -> Option<Resource> {
    match (path.parts.as_slice(), path.trailing_slash) {
        ([PREFIX], _) => {
            Some(Resource::Text(listing(&["meta-data", "user-data", "vendor-data", "network-config"])))
        }
        ([PREFIX, "meta-data"], false) => Some(Resource::Text(meta_data(facts))),
        ([PREFIX, "user-data"], false) => Some(Resource::UserData(Missing::Empty)),
        ([PREFIX, "vendor-data"], false) => Some(Resource::VendorData(Missing::Empty)),
        ([PREFIX, "network-config"], false) => Some(Resource::NetworkConfig),
        _ => None,
    }
}

/// YAML with JSON-quoted values (valid YAML whatever the names contain).
/// `public-keys` is a map by name, as in KubeVirt's own NoCloud meta-data
/// (`pkg/cloud-init/cloud-init.go`, `NoCloudMetadata`).
pub fn meta_data(facts: &InstanceFacts) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let mut yaml = format!(
        "instance-id: {}\nlocal-hostname: {}\nhostname: {}\n",
        q(&facts.instance_id),
        q(&facts.hostname),
        q(&facts.hostname)
    );
    if !facts.public_keys.is_empty() {
        yaml.push_str("public-keys:\n");
        for key in &facts.public_keys {
            yaml.push_str(&format!("  {}: {}\n", q(&key.name), q(&key.openssh_key)));
        }
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str) -> Option<Resource> {
        resolve(&Segments::parse(path)?, &InstanceFacts::new("vm", "ns", None))
    }

    #[test]
    fn the_seed_serial_points_here_in_network_mode() {
        assert!(SEED_SERIAL.split(';').any(|kv| kv == "dsmode=net"), "{SEED_SERIAL}");
        assert!(!SEED_SERIAL.contains(|c: char| c.is_whitespace() || c == ','), "{SEED_SERIAL}");
        let seed_url = SEED_SERIAL.split(';').find_map(|kv| kv.strip_prefix("s=")).unwrap();
        let [a, b, c, d] = crate::contract::IMDS_IP.octets();
        assert_eq!(seed_url, format!("http://{a}.{b}.{c}.{d}/{PREFIX}/"));
        // What cloud-init 22.4.2 then fetches resolves here.
        let path = seed_url.strip_prefix(&format!("http://{a}.{b}.{c}.{d}")).unwrap();
        for file in ["meta-data", "user-data", "vendor-data"] {
            assert!(at(&format!("{path}{file}")).is_some(), "{path}{file}");
        }
    }

    #[test]
    fn the_seed_files() {
        assert_eq!(
            at("/nocloud/meta-data"),
            Some(Resource::Text("instance-id: \"vm.ns\"\nlocal-hostname: \"vm\"\nhostname: \"vm\"\n".into()))
        );
        let mut facts = InstanceFacts::new("vm", "ns", None);
        facts.public_keys = vec![
            super::super::PublicKey { name: "laptop".into(), openssh_key: "ssh-ed25519 AAAA a\"b".into() },
            super::super::PublicKey { name: "ci".into(), openssh_key: "ssh-rsa BBBB".into() },
        ];
        assert!(meta_data(&facts).ends_with(
            "public-keys:\n  \"laptop\": \"ssh-ed25519 AAAA a\\\"b\"\n  \"ci\": \"ssh-rsa BBBB\"\n"
        ));
        assert_eq!(at("/nocloud/user-data"), Some(Resource::UserData(Missing::Empty)));
        assert_eq!(at("/nocloud/vendor-data"), Some(Resource::VendorData(Missing::Empty)));
        assert_eq!(at("/nocloud/network-config"), Some(Resource::NetworkConfig));
        assert!(matches!(at("/nocloud/"), Some(Resource::Text(_))));
        for bad in [
            "/nocloud/meta-data/",
            "/nocloud/../meta-data",
            "/nocloud/x",
            "/nocloud/meta-data/x",
            "/nocloudx/meta-data",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
