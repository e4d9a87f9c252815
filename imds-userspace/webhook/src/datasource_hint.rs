//! Pointing a stock image's cloud-init at the IMDS through the VM's SMBIOS,
//! as a pure function of the VirtualMachineInstance's firmware and chassis.
//!
//! KubeVirt turns `spec.domain.firmware.uuid` / `.serial` into the guest's
//! SMBIOS system UUID and serial, and `spec.domain.chassis.*` into its
//! chassis entries (KubeVirt v1.9
//! `pkg/virt-launcher/virtwrap/converter/compute/sysinfo.go`); cloud-init's
//! `ds-identify` and datasources read them back from `/sys/class/dmi/id/`.
//! What each flavour needs, from cloud-init's own source (tags 22.4.2 to 26.2):
//!
//! - **NoCloud**: a `ds=nocloud;s=<url>;dsmode=net` token in the system
//!   serial ([`SEED_SERIAL`]); `ds-identify`'s `dscheck_NoCloud` globs
//!   `" ${serial} "` for `*\ ds=nocloud*`, and the datasource takes the
//!   whitespace-separated token that starts with `ds=nocloud`
//!   (`DataSourceNoCloud.py`, `parse_cmdline_data`; 24.1+ `parse_cmdline_or_dmi`),
//!   so the token may follow other text.
//! - **OpenStack**: chassis asset tag `OpenStack Nova` (`ds-identify`
//!   `dscheck_OpenStack`, `DataSourceOpenStack.py` `VALID_DMI_ASSET_TAGS`).
//! - **EC2**: off AWS, `ds-identify` drops Ec2 unless the platform looks
//!   like AWS (`ec2_identify_platform`, `DI_EC2_STRICT_ID_DEFAULT="true"`):
//!   system UUID and serial both starting with `ec2` and equal ignoring case
//!   (up to 24.1), or the UUID alone starting with `ec2` (24.2+). cloud-init
//!   then behaves as on AWS (IMDSv2 session first, which the IMDS serves).
//!
//! Only one datasource is pointed at: with the NoCloud serial and the
//! OpenStack tag both present, OpenStack's local stage claims the instance
//! before NoCloud's network stage is asked.
//!
//! What a user already set is respected as far as the hint allows: a serial
//! keeps its text (the NoCloud token is appended after a space), a serial
//! that already names a `ds=` is left alone, a chassis asset tag of the
//! user's own is left alone. The EC2 hint cannot be combined with another
//! serial: it replaces the serial with the UUID, and an UUID not starting
//! with `ec2` gets that prefix (KubeVirt >= 1.7 fills both with random
//! UUIDs when a VM is created, `vm-mutator.go` `setFirmwareDefaultsIfEmpty`,
//! so they are rarely the user's own). `imds.kubevirt.io/datasource-hint:
//! none` turns all of this off.

use json_patch::{AddOperation, PatchOperation, jsonptr::PointerBuf};
use serde_json::{Value, json};

use crate::contract::Flavor;
pub use crate::contract::SEED_SERIAL;

/// The chassis asset tag cloud-init takes for OpenStack Nova.
pub const OPENSTACK_ASSET_TAG: &str = "OpenStack Nova";
/// Every tag cloud-init reads as OpenStack (the same in 22.4.2 … 26.2).
const OPENSTACK_ASSET_TAGS: [&str; 2] = ["OpenStack Nova", "OpenStack Compute"];

/// Namespace of the UUIDv5 that names a VMI without a firmware UUID
/// (`<namespace>/<name>`), so a recreated VMI gets the same EC2 identity.
const UUID_NAMESPACE: uuid::Uuid = uuid::uuid!("ccc01b63-a1bd-400a-88df-5dba20cb660a");

/// The `imds.kubevirt.io/datasource-hint` annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HintChoice {
    /// The first served flavour of nocloud, openstack, ec2.
    #[default]
    Auto,
    /// Leave the SMBIOS alone.
    Off,
    /// This flavour (which must be served).
    Only(Flavor),
}

impl HintChoice {
    /// `auto`, `none`, or a flavour's name.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "auto" => Some(Self::Auto),
            "none" => Some(Self::Off),
            other => Flavor::ALL.into_iter().find(|f| f.name() == other).map(Self::Only),
        }
    }

    /// The flavour to point cloud-init at, given the served ones (sorted in
    /// [`Flavor`] order, which is also the order of preference: NoCloud
    /// needs no disguise, OpenStack only a tag, EC2 the UUID).
    pub fn resolve(self, flavors: &[Flavor]) -> Option<Flavor> {
        match self {
            Self::Auto => flavors.first().copied(),
            Self::Off => None,
            Self::Only(flavor) => flavors.contains(&flavor).then_some(flavor),
        }
    }
}

/// The SMBIOS-bearing fields of a VMI, as found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Smbios {
    pub firmware: bool,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub chassis: bool,
    pub asset: Option<String>,
}

impl Smbios {
    /// Reads them from a VMI object; a field of the wrong type is an error
    /// naming it (the API server has not validated the object yet).
    pub fn read(vmi: &Value) -> Result<Self, String> {
        let domain = vmi.pointer("/spec/domain").ok_or("the VirtualMachineInstance has no spec.domain")?;
        let text = |pointer: &str, name: &str| match domain.pointer(pointer) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("spec.domain.{name} is not a string")),
        };
        let present = |pointer: &str| domain.pointer(pointer).is_some_and(|v| !v.is_null());
        Ok(Self {
            firmware: present("/firmware"),
            uuid: text("/firmware/uuid", "firmware.uuid")?,
            serial: text("/firmware/serial", "firmware.serial")?,
            chassis: present("/chassis"),
            asset: text("/chassis/asset", "chassis.asset")?,
        })
    }
}

/// What the hint does to one VMI.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// JSONPatch operations on the VMI (empty when nothing changes).
    pub ops: Vec<PatchOperation>,
    /// One line for the VMI's `imds.kubevirt.io/datasource-hint-applied`
    /// annotation and the webhook's log.
    pub summary: String,
    /// Set when the user's own SMBIOS keeps cloud-init from finding the IMDS.
    pub warning: Option<String>,
    /// The firmware UUID the VMI has afterwards, when the change sets it.
    pub firmware_uuid: Option<String>,
}

/// The change for `flavor` on a VMI with `smbios`; `name` is
/// `(namespace, name)` when the VMI has one (for a stable UUID), else the
/// admission request's UID stands in.
pub fn apply(flavor: Flavor, smbios: &Smbios, name: Result<(&str, &str), &str>) -> Change {
    match flavor {
        Flavor::Nocloud => nocloud(smbios),
        Flavor::Openstack => openstack(smbios),
        Flavor::Ec2 => ec2(smbios, name),
    }
}

fn nocloud(smbios: &Smbios) -> Change {
    match &smbios.serial {
        None => Change {
            firmware_uuid: None,
            ops: vec![firmware_field(smbios, "serial", SEED_SERIAL)],
            summary: "nocloud: firmware.serial set to the NoCloud seed".into(),
            warning: None,
        },
        Some(serial) if serial.split_whitespace().any(|token| token.starts_with("ds=")) => {
            let summary =
                format!("nocloud: firmware.serial already names a datasource ({serial:?}); left as is");
            Change {
                firmware_uuid: None,
                ops: Vec::new(),
                warning: (!serial.split_whitespace().any(|t| t == SEED_SERIAL)).then(|| {
                    format!(
                        "spec.domain.firmware.serial {serial:?} names another datasource: cloud-init reads \
                         the IMDS's NoCloud seed only from {SEED_SERIAL:?}"
                    )
                }),
                summary,
            }
        }
        Some(serial) => Change {
            firmware_uuid: None,
            ops: vec![firmware_field(smbios, "serial", &format!("{serial} {SEED_SERIAL}"))],
            summary: "nocloud: the NoCloud seed appended to firmware.serial (its own text kept first)".into(),
            warning: None,
        },
    }
}

fn openstack(smbios: &Smbios) -> Change {
    match &smbios.asset {
        None => {
            let op = if smbios.chassis {
                add(&["spec", "domain", "chassis", "asset"], json!(OPENSTACK_ASSET_TAG))
            } else {
                add(&["spec", "domain", "chassis"], json!({ "asset": OPENSTACK_ASSET_TAG }))
            };
            Change {
                firmware_uuid: None,
                ops: vec![op],
                summary: format!("openstack: chassis.asset set to {OPENSTACK_ASSET_TAG:?}"),
                warning: None,
            }
        }
        Some(asset) if OPENSTACK_ASSET_TAGS.contains(&asset.as_str()) => Change {
            firmware_uuid: None,
            ops: Vec::new(),
            summary: format!("openstack: chassis.asset is already {asset:?}"),
            warning: None,
        },
        Some(asset) => Change {
            firmware_uuid: None,
            ops: Vec::new(),
            summary: format!("openstack: chassis.asset is the user's {asset:?}; left as is"),
            warning: Some(format!(
                "spec.domain.chassis.asset is {asset:?}: cloud-init detects OpenStack only from \
                 {OPENSTACK_ASSET_TAG:?} there (or set imds.kubevirt.io/datasource-hint)"
            )),
        },
    }
}

fn ec2(smbios: &Smbios, name: Result<(&str, &str), &str>) -> Change {
    let current = smbios.uuid.as_deref().map(|u| (u, uuid::Uuid::try_parse(u)));
    let target = match current {
        Some((text, _)) if text.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("ec2")) => text.to_owned(),
        Some((_, Ok(parsed))) => ec2_uuid(parsed),
        Some((text, Err(_))) => {
            return Change {
                firmware_uuid: None,
                ops: Vec::new(),
                summary: format!("ec2: firmware.uuid {text:?} is not a UUID; left as is"),
                warning: Some(format!(
                    "spec.domain.firmware.uuid {text:?} is not a UUID: cloud-init cannot be pointed at \
                     the EC2 metadata"
                )),
            };
        }
        None => ec2_uuid(match name {
            Ok((namespace, name)) => {
                uuid::Uuid::new_v5(&UUID_NAMESPACE, format!("{namespace}/{name}").as_bytes())
            }
            Err(request_uid) => uuid::Uuid::try_parse(request_uid)
                .unwrap_or_else(|_| uuid::Uuid::new_v5(&UUID_NAMESPACE, request_uid.as_bytes())),
        }),
    };
    let mut ops = Vec::new();
    let mut changed = Vec::new();
    if smbios.uuid.as_deref() != Some(target.as_str()) {
        changed.push("firmware.uuid");
    }
    if !smbios.serial.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&target)) {
        changed.push("firmware.serial");
    }
    match (smbios.firmware, changed.as_slice()) {
        (_, []) => {}
        (false, _) => {
            ops.push(add(&["spec", "domain", "firmware"], json!({ "uuid": target, "serial": target })))
        }
        (true, fields) => {
            for field in fields {
                let key = field.trim_start_matches("firmware.");
                ops.push(add(&["spec", "domain", "firmware", key], json!(target)));
            }
        }
    }
    let summary = if changed.is_empty() {
        format!("ec2: firmware.uuid and serial are already {target}")
    } else {
        format!("ec2: {} set to {target}", changed.join(" and "))
    };
    Change { ops, summary, warning: None, firmware_uuid: Some(target) }
}

/// The same UUID with `ec2` as its first three digits (still a valid UUID:
/// `e`, `c` and `2` are hex digits).
fn ec2_uuid(uuid: uuid::Uuid) -> String {
    let text = uuid.hyphenated().to_string();
    format!("ec2{}", &text[3..])
}

/// Sets `firmware.<field>`, creating `firmware` when the VMI has none.
fn firmware_field(smbios: &Smbios, field: &str, value: &str) -> PatchOperation {
    if smbios.firmware {
        add(&["spec", "domain", "firmware", field], json!(value))
    } else {
        add(&["spec", "domain", "firmware"], json!({ field: value }))
    }
}

/// JSONPatch `add`, which also replaces an existing member.
pub fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(path.iter().copied()), value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(domain: Value) -> Value {
        json!({ "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "spec": { "domain": domain } })
    }

    /// Applies `change` to `doc` and reads the SMBIOS back.
    fn after(doc: &Value, change: &Change) -> Smbios {
        let mut doc = doc.clone();
        json_patch::patch(&mut doc, &change.ops).expect("the patch applies");
        Smbios::read(&doc).unwrap()
    }

    const NAME: Result<(&str, &str), &str> = Ok(("vm-team", "fedora"));

    #[test]
    fn choices() {
        let all = Flavor::ALL;
        assert_eq!(HintChoice::parse("auto"), Some(HintChoice::Auto));
        assert_eq!(HintChoice::parse("none"), Some(HintChoice::Off));
        assert_eq!(HintChoice::parse("ec2"), Some(HintChoice::Only(Flavor::Ec2)));
        for bad in ["", "Auto", "NoCloud", "gce", " ec2"] {
            assert_eq!(HintChoice::parse(bad), None, "{bad:?}");
        }
        assert_eq!(HintChoice::Auto.resolve(&all), Some(Flavor::Nocloud));
        assert_eq!(HintChoice::Auto.resolve(&[Flavor::Openstack, Flavor::Ec2]), Some(Flavor::Openstack));
        assert_eq!(HintChoice::Auto.resolve(&[]), None);
        assert_eq!(HintChoice::Off.resolve(&all), None);
        assert_eq!(HintChoice::Only(Flavor::Ec2).resolve(&all), Some(Flavor::Ec2));
        assert_eq!(HintChoice::Only(Flavor::Ec2).resolve(&[Flavor::Nocloud]), None);
    }

    #[test]
    fn nocloud_sets_appends_or_respects() {
        let bare = vmi(json!({}));
        let change = apply(Flavor::Nocloud, &Smbios::read(&bare).unwrap(), NAME);
        assert_eq!(after(&bare, &change).serial.as_deref(), Some(SEED_SERIAL));

        // KubeVirt >= 1.7 gives every new VM a random serial: kept, seed appended.
        let kubevirt = vmi(json!({"firmware": {"uuid": "5a9fc181-957e-5c32-9e5a-2de5e9673531",
                                               "serial": "0b7c5c1e-3a52-4f0c-9d41-6c1f0a4b8e2d"}}));
        let change = apply(Flavor::Nocloud, &Smbios::read(&kubevirt).unwrap(), NAME);
        let serial = after(&kubevirt, &change).serial.unwrap();
        assert_eq!(serial, format!("0b7c5c1e-3a52-4f0c-9d41-6c1f0a4b8e2d {SEED_SERIAL}"));
        assert!(change.warning.is_none());
        // cloud-init's token rule: the seed is a whitespace-separated token.
        assert!(serial.split_whitespace().any(|t| t == SEED_SERIAL));

        // Applying twice changes nothing the second time.
        let once = {
            let mut d = kubevirt.clone();
            json_patch::patch(&mut d, &change.ops).unwrap();
            d
        };
        let again = apply(Flavor::Nocloud, &Smbios::read(&once).unwrap(), NAME);
        assert!(again.ops.is_empty() && again.warning.is_none(), "{again:?}");

        // The user's own ds= is theirs.
        let own = vmi(json!({"firmware": {"serial": "ds=nocloud;s=http://10.0.0.5/seed/"}}));
        let change = apply(Flavor::Nocloud, &Smbios::read(&own).unwrap(), NAME);
        assert!(change.ops.is_empty());
        assert!(change.warning.unwrap().contains(SEED_SERIAL));
    }

    #[test]
    fn openstack_tags_the_chassis_unless_the_user_did() {
        for domain in [json!({}), json!({"chassis": {"manufacturer": "ACME"}}), json!({"chassis": null})] {
            let doc = vmi(domain);
            let change = apply(Flavor::Openstack, &Smbios::read(&doc).unwrap(), NAME);
            assert_eq!(after(&doc, &change).asset.as_deref(), Some(OPENSTACK_ASSET_TAG), "{doc}");
        }
        let kept = vmi(json!({"chassis": {"manufacturer": "ACME"}}));
        let change = apply(Flavor::Openstack, &Smbios::read(&kept).unwrap(), NAME);
        let mut doc = kept.clone();
        json_patch::patch(&mut doc, &change.ops).unwrap();
        assert_eq!(doc["spec"]["domain"]["chassis"]["manufacturer"], "ACME");

        let compute = vmi(json!({"chassis": {"asset": "OpenStack Compute"}}));
        let change = apply(Flavor::Openstack, &Smbios::read(&compute).unwrap(), NAME);
        assert!(change.ops.is_empty() && change.warning.is_none());

        let users = vmi(json!({"chassis": {"asset": "INV-0042"}}));
        let change = apply(Flavor::Openstack, &Smbios::read(&users).unwrap(), NAME);
        assert!(change.ops.is_empty());
        assert!(change.warning.unwrap().contains("INV-0042"));
    }

    /// ds-identify's rule up to 24.1: UUID and serial start with ec2 and are
    /// equal ignoring case; 24.2+: the UUID starts with ec2.
    fn looks_like_aws(s: &Smbios) -> bool {
        let (Some(uuid), Some(serial)) = (&s.uuid, &s.serial) else { return false };
        uuid.to_ascii_lowercase().starts_with("ec2") && uuid.eq_ignore_ascii_case(serial)
    }

    #[test]
    fn ec2_makes_uuid_and_serial_look_like_aws() {
        let cases = [
            vmi(json!({})),
            vmi(json!({"firmware": {"uuid": "5a9fc181-957e-5c32-9e5a-2de5e9673531"}})),
            vmi(json!({"firmware": {"uuid": "5a9fc181-957e-5c32-9e5a-2de5e9673531",
                                    "serial": "0b7c5c1e-3a52-4f0c-9d41-6c1f0a4b8e2d"}})),
            vmi(json!({"firmware": {"uuid": "EC2AB181-957E-5C32-9E5A-2DE5E9673531", "serial": "x"}})),
        ];
        for doc in cases {
            let change = apply(Flavor::Ec2, &Smbios::read(&doc).unwrap(), NAME);
            let s = after(&doc, &change);
            assert!(looks_like_aws(&s), "{doc} -> {s:?}");
            assert!(uuid::Uuid::try_parse(s.uuid.as_deref().unwrap()).is_ok());
            // Idempotent.
            let mut once = doc.clone();
            json_patch::patch(&mut once, &change.ops).unwrap();
            assert!(apply(Flavor::Ec2, &Smbios::read(&once).unwrap(), NAME).ops.is_empty());
        }
        // The UUID keeps its other digits, so it stays the VM's own.
        let doc = vmi(json!({"firmware": {"uuid": "5a9fc181-957e-5c32-9e5a-2de5e9673531"}}));
        let s = after(&doc, &apply(Flavor::Ec2, &Smbios::read(&doc).unwrap(), NAME));
        assert_eq!(s.uuid.as_deref(), Some("ec2fc181-957e-5c32-9e5a-2de5e9673531"));
        // Without a UUID: stable for a name, different between names.
        let bare = vmi(json!({}));
        let smbios = Smbios::read(&bare).unwrap();
        let a = after(&bare, &apply(Flavor::Ec2, &smbios, Ok(("ns", "a")))).uuid;
        assert_eq!(a, after(&bare, &apply(Flavor::Ec2, &smbios, Ok(("ns", "a")))).uuid);
        assert_ne!(a, after(&bare, &apply(Flavor::Ec2, &smbios, Ok(("ns", "b")))).uuid);
        assert_ne!(a, after(&bare, &apply(Flavor::Ec2, &smbios, Ok(("other", "a")))).uuid);
        let from_uid =
            after(&bare, &apply(Flavor::Ec2, &smbios, Err("705ab4f5-6393-11e8-b7cc-42010a800002")));
        assert_eq!(from_uid.uuid.as_deref(), Some("ec2ab4f5-6393-11e8-b7cc-42010a800002"));
        // Not a UUID: left alone, said so.
        let odd = vmi(json!({"firmware": {"uuid": "my-machine"}}));
        let change = apply(Flavor::Ec2, &Smbios::read(&odd).unwrap(), NAME);
        assert!(change.ops.is_empty() && change.warning.is_some());
    }

    #[test]
    fn wrong_types_are_named() {
        assert!(
            Smbios::read(&vmi(json!({"firmware": {"serial": 42}}))).unwrap_err().contains("firmware.serial")
        );
        assert!(Smbios::read(&vmi(json!({"chassis": {"asset": []}}))).unwrap_err().contains("chassis.asset"));
        assert!(Smbios::read(&json!({"spec": {}})).unwrap_err().contains("spec.domain"));
    }
}
