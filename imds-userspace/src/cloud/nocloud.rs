//! NoCloud over HTTP: the SMBIOS serial [`SEED_SERIAL`] (or the same token
//! on the kernel command line) makes cloud-init's NoCloud datasource read
//! `meta-data`, `user-data` and `vendor-data` here (newer releases also
//! `network-config`).

use super::{InstanceFacts, Missing, Resource, Segments, listing};

pub const PREFIX: &str = "nocloud";

/// The SMBIOS system serial (`spec.domain.firmware.serial`) that points
/// cloud-init's NoCloud datasource at this service.
///
/// Why `dsmode=net`: cloud-init 22.4.2 (Debian 12) decides the mode from the
/// id alone (`load_cmdline_data` in `DataSourceNoCloud.py` tries
/// `ds=nocloud` → local, then `ds=nocloud-net` → net, and sets the mode only
/// if none was given), so a bare `ds=nocloud;s=http://…` stops with
/// `[net] Exiting. datasource … in local mode` before the network is up. An
/// explicit `dsmode=net` wins on every release, and on 24.1+ (which finds
/// NoCloud from the DMI serial through `parse_cmdline_or_dmi`) it draws no
/// deprecation warning, unlike `ds=nocloud-net` (deprecated in 24.1).
/// Upstream 23.4.x cannot select NoCloud over HTTP from the DMI serial at
/// all: `DataSourceNoCloudNet.ds_detect` reads only the kernel command line,
/// and since 23.4 ds-identify's `[NoCloud, None]` no longer overrides
/// detection (23.2–23.3 got through that override only). Fixed in 24.1
/// (canonical/cloud-init PR #4949, issues #4945, #4951); images with 23.4.x
/// need the OpenStack flavour.
///
/// The trailing slash is required: 22.4.2's `util.read_seeded` appends
/// `meta-data` to the URL as is. No whitespace and no `,`: the command-line
/// parser splits on whitespace and QEMU's `-smbios` on commas.
pub const SEED_SERIAL: &str = "ds=nocloud;s=http://169.254.169.254/nocloud/;dsmode=net";

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
pub fn meta_data(facts: &InstanceFacts) -> String {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "instance-id: {}\nlocal-hostname: {}\nhostname: {}\n",
        q(&facts.instance_id),
        q(&facts.hostname),
        q(&facts.hostname)
    )
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
        let [a, b, c, d] = imds_ebpf::abi::IMDS_ADDR;
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
