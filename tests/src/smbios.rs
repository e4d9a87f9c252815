//! The SMBIOS a KubeVirt VM's guest sees, as QEMU arguments, from a
//! VirtualMachineInstance.
//!
//! KubeVirt v1.9 `pkg/virt-launcher/virtwrap/converter/compute/sysinfo.go`
//! writes the domain's `<sysinfo type='smbios'>`: system entries `uuid`
//! (`spec.domain.firmware.uuid`) and `serial` (when non-empty), when the VMI
//! has a `firmware`, then the cluster's SMBIOS configuration (manufacturer,
//! family, product, sku, version; defaults from
//! `pkg/virt-config/virt-config.go`); chassis entries from
//! `spec.domain.chassis`. libvirt drops empty entries and turns the rest into
//! `-smbios type=1,…` and `type=3,…` in its own field order (commas in values
//! doubled, QEMU's escape), and the domain's UUID — the system uuid, when
//! KubeVirt gives one — into `-uuid`.

use serde_json::Value;

/// The cluster-wide SMBIOS defaults (KubeVirt CR `spec.configuration.smbios`).
pub const DEFAULT_MANUFACTURER: &str = "KubeVirt";
pub const DEFAULT_FAMILY: &str = "KubeVirt";
pub const DEFAULT_PRODUCT: &str = "None";

/// `-uuid` and `-smbios` arguments for `vmi`, with the default cluster
/// SMBIOS configuration.
pub fn qemu_args(vmi: &Value) -> Vec<String> {
    let domain = &vmi["spec"]["domain"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let firmware = domain.get("firmware").filter(|f| f.is_object());
    let uuid = firmware.map(|f| text(&f["uuid"])).unwrap_or_default();
    let serial = firmware.map(|f| text(&f["serial"])).unwrap_or_default();

    let mut args = Vec::new();
    if !uuid.is_empty() {
        args.extend(["-uuid".to_owned(), uuid.clone()]);
    }
    // libvirt's order for type 1 (qemuBuildSmbiosSystemStr).
    let system = smbios_option(
        1,
        &[
            ("manufacturer", DEFAULT_MANUFACTURER),
            ("product", DEFAULT_PRODUCT),
            ("version", ""),
            ("serial", &serial),
            ("uuid", &uuid),
            ("sku", ""),
            ("family", DEFAULT_FAMILY),
        ],
    );
    args.extend(system.map(|s| ["-smbios".to_owned(), s]).into_iter().flatten());

    if let Some(chassis) = domain.get("chassis").filter(|c| c.is_object()) {
        // libvirt's order for type 3 (qemuBuildSmbiosChassisStr).
        let fields: Vec<(&str, String)> = ["manufacturer", "version", "serial", "asset", "sku"]
            .into_iter()
            .map(|name| (name, text(&chassis[name])))
            .collect();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        args.extend(smbios_option(3, &fields).map(|s| ["-smbios".to_owned(), s]).into_iter().flatten());
    }
    args
}

/// `type=<n>,name=value,…` with the empty fields left out, or `None` when
/// every field is empty (libvirt then passes no `-smbios` for the type).
fn smbios_option(table: u8, fields: &[(&str, &str)]) -> Option<String> {
    let set: Vec<String> = fields
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={}", escape_commas(value)))
        .collect();
    (!set.is_empty()).then(|| format!("type={table},{}", set.join(",")))
}

/// QEMU's option syntax separates fields with commas; a comma inside a
/// value is written twice.
pub fn escape_commas(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn firmware_uuid_and_serial_become_type_1_and_the_domain_uuid() {
        let vmi = json!({"spec": {"domain": {"firmware": {
            "uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223",
            "serial": "ds=nocloud;s=http://169.254.169.254/nocloud/;dsmode=net"
        }}}});
        assert_eq!(
            qemu_args(&vmi),
            [
                "-uuid",
                "5d307ca9-b3ef-428c-8861-06e72d69f223",
                "-smbios",
                "type=1,manufacturer=KubeVirt,product=None,\
                 serial=ds=nocloud;s=http://169.254.169.254/nocloud/;dsmode=net,\
                 uuid=5d307ca9-b3ef-428c-8861-06e72d69f223,family=KubeVirt",
            ]
        );
    }

    #[test]
    fn without_firmware_only_the_cluster_defaults() {
        assert_eq!(
            qemu_args(&json!({"spec": {"domain": {}}})),
            ["-smbios", "type=1,manufacturer=KubeVirt,product=None,family=KubeVirt"]
        );
        // An empty serial is not an entry (sysinfo.go checks its length).
        assert_eq!(
            qemu_args(&json!({"spec": {"domain": {"firmware": {"serial": ""}}}})),
            ["-smbios", "type=1,manufacturer=KubeVirt,product=None,family=KubeVirt"]
        );
    }

    #[test]
    fn chassis_becomes_type_3_in_libvirts_order_without_empty_fields() {
        let vmi = json!({"spec": {"domain": {"chassis": {
            "sku": "s1", "asset": "OpenStack Nova", "manufacturer": "ACME", "serial": "", "version": "2"
        }}}});
        assert_eq!(
            qemu_args(&vmi)[2..],
            ["-smbios", "type=3,manufacturer=ACME,version=2,asset=OpenStack Nova,sku=s1"]
        );
        let empty = json!({"spec": {"domain": {"chassis": {}}}});
        assert_eq!(qemu_args(&empty).len(), 2, "an empty chassis adds no type 3");
    }

    #[test]
    fn commas_in_values_are_doubled() {
        assert_eq!(escape_commas("a,b,,c"), "a,,b,,,,c");
        let vmi = json!({"spec": {"domain": {"firmware": {"serial": "ds=nocloud,s=x"}, "chassis": {"asset": "a,b"}}}});
        assert_eq!(
            qemu_args(&vmi),
            [
                "-smbios",
                "type=1,manufacturer=KubeVirt,product=None,serial=ds=nocloud,,s=x,family=KubeVirt",
                "-smbios",
                "type=3,asset=a,,b",
            ]
        );
    }
}
