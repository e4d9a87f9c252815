//! The `imds.kubevirt.io/*` annotations a user puts on a VM's template
//! (KubeVirt copies them onto the virt-launcher pod), parsed and validated.

use std::collections::BTreeMap;

use super::datasource_hint::HintChoice;
use crate::contract::{self, Flavor, Imdsv2};

pub const PREFIX: &str = "imds.kubevirt.io/";
/// `"true"` (exactly) turns the IMDS on for the VM.
pub const ENABLED: &str = "imds.kubevirt.io/enabled";
/// Lifetime of the projected token, in seconds.
pub const TOKEN_EXPIRATION_SECONDS: &str = "imds.kubevirt.io/token-expiration-seconds";
/// Serve only the VM behind this bridge (default: every `k6t-*` bridge).
pub const BRIDGE_NAME: &str = "imds.kubevirt.io/bridge-name";
/// Extra token audiences, comma separated (e.g. `sts.amazonaws.com,vault`).
pub const TOKEN_AUDIENCES: &str = "imds.kubevirt.io/token-audiences";
/// `"false"`: no token for the API server's audience (least exposure).
pub const DEFAULT_TOKEN: &str = "imds.kubevirt.io/default-token";
/// Cloud metadata formats to serve, comma separated (`nocloud,openstack,ec2`).
pub const METADATA_FLAVORS: &str = "imds.kubevirt.io/metadata-flavors";
/// A Secret (keys `userdata`, `vendordata`, `networkdata`) the flavours serve.
pub const USER_DATA_SECRET: &str = "imds.kubevirt.io/user-data-secret";
/// `required` makes the EC2 flavour demand IMDSv2 sessions.
pub const EC2_IMDSV2: &str = "imds.kubevirt.io/ec2-imdsv2";
/// Which cloud-init datasource the VM's SMBIOS points at: `auto` (the
/// default), `none`, or one of the served flavours.
pub const DATASOURCE_HINT: &str = "imds.kubevirt.io/datasource-hint";
/// IP TTL of the IMDS's packets (default 1, like AWS's hop limit): 2 lets
/// containers behind a NAT or bridge inside the guest reach it.
pub const HOP_LIMIT: &str = "imds.kubevirt.io/hop-limit";
/// Set by the webhook on the pods it changed.
pub const INJECTED: &str = "imds.kubevirt.io/injected";
/// Set by the webhook on the VMIs whose SMBIOS it considered: what it did.
pub const DATASOURCE_HINT_APPLIED: &str = "imds.kubevirt.io/datasource-hint-applied";

const KNOWN: [&str; 14] = [
    ENABLED,
    TOKEN_EXPIRATION_SECONDS,
    BRIDGE_NAME,
    TOKEN_AUDIENCES,
    DEFAULT_TOKEN,
    METADATA_FLAVORS,
    USER_DATA_SECRET,
    EC2_IMDSV2,
    DATASOURCE_HINT,
    HOP_LIMIT,
    INJECTED,
    DATASOURCE_HINT_APPLIED,
    super::firmware_uuid::ANNOTATION,
    super::ssh_keys::ANNOTATION,
];

/// Kubernetes' bounds for a projected token's `expirationSeconds`.
pub const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;
pub const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 1 << 32;
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// What the annotations ask for, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImdsSettings {
    pub token_expiration_seconds: i64,
    pub bridge_name: Option<String>,
    /// Extra audiences, deduplicated, in the order given.
    pub audiences: Vec<String>,
    /// Whether the API-server-audience token is mounted and served.
    pub default_token: bool,
    /// Cloud metadata formats, sorted, deduplicated.
    pub flavors: Vec<Flavor>,
    pub user_data_secret: Option<String>,
    pub ec2_imdsv2: Imdsv2,
    /// Which datasource the VMI's SMBIOS points cloud-init at.
    pub datasource_hint: HintChoice,
    /// The IP TTL of the IMDS's answers.
    pub hop_limit: u8,
}

/// A malformed annotation: the message names it and the expected form, and
/// reaches the user through the VMI's events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} is not valid: expected {expected}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub expected: String,
}

/// Whether the pod (or VMI) asks for the IMDS: the label or the annotation
/// [`ENABLED`] is exactly "true". The label is the opt-in the webhook
/// configuration's `objectSelector` matches (KubeVirt copies the VM
/// template's labels onto the VMI and the pod, `template.go`), so only
/// opted-in objects reach the webhook; the annotation is the opt-in of
/// clusters that select every virt-launcher pod instead.
pub fn opted_in(labels: &BTreeMap<String, String>, annotations: &BTreeMap<String, String>) -> bool {
    labels.get(ENABLED).is_some_and(|v| v == "true") || annotations.get(ENABLED).is_some_and(|v| v == "true")
}

/// Parses the settings of an enabled pod.
pub fn settings(annotations: &BTreeMap<String, String>) -> Result<ImdsSettings, AnnotationError> {
    let token_expiration_seconds = match annotations.get(TOKEN_EXPIRATION_SECONDS) {
        None => DEFAULT_TOKEN_EXPIRATION_SECONDS,
        Some(value) => value
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|s| (MIN_TOKEN_EXPIRATION_SECONDS..=MAX_TOKEN_EXPIRATION_SECONDS).contains(s))
            .ok_or_else(|| AnnotationError {
                annotation: TOKEN_EXPIRATION_SECONDS,
                value: value.clone(),
                expected: format!(
                    "a whole number of seconds from {MIN_TOKEN_EXPIRATION_SECONDS} to \
                     {MAX_TOKEN_EXPIRATION_SECONDS} (Kubernetes' limits), e.g. \"3600\""
                ),
            })?,
    };
    let bridge_name = match annotations.get(BRIDGE_NAME) {
        None => None,
        Some(value) => {
            contract::check_interface_name(value).map_err(|reason| AnnotationError {
                annotation: BRIDGE_NAME,
                value: value.clone(),
                expected: format!("the name of the VM's bridge, e.g. \"k6t-eth0\" ({reason})"),
            })?;
            Some(value.clone())
        }
    };
    let audiences = match annotations.get(TOKEN_AUDIENCES) {
        None => Vec::new(),
        Some(value) => parse_audiences(value).map_err(|reason| AnnotationError {
            annotation: TOKEN_AUDIENCES,
            value: value.clone(),
            expected: format!(
                "a comma-separated list of at most {} audiences, each 1 to {} bytes without control \
                 characters, e.g. \"sts.amazonaws.com,vault\" ({reason})",
                contract::MAX_AUDIENCES,
                contract::MAX_AUDIENCE_LEN
            ),
        })?,
    };
    let default_token = match annotations.get(DEFAULT_TOKEN).map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(AnnotationError {
                annotation: DEFAULT_TOKEN,
                value: other.to_owned(),
                expected: "\"true\" (the default) or \"false\"".into(),
            });
        }
    };
    let flavors = match annotations.get(METADATA_FLAVORS) {
        None => Vec::new(),
        Some(value) => contract::parse_flavors(value).map_err(|reason| AnnotationError {
            annotation: METADATA_FLAVORS,
            value: value.clone(),
            expected: format!(
                "a comma-separated subset of nocloud, openstack, ec2, e.g. \"nocloud,ec2\" ({reason})"
            ),
        })?,
    };
    let user_data_secret = match annotations.get(USER_DATA_SECRET) {
        None => None,
        Some(value) => {
            check_object_name(value).map_err(|reason| AnnotationError {
                annotation: USER_DATA_SECRET,
                value: value.clone(),
                expected: format!("the name of a Secret in the VM's namespace ({reason})"),
            })?;
            Some(value.clone())
        }
    };
    let ec2_imdsv2 = match annotations.get(EC2_IMDSV2).map(String::as_str) {
        None | Some("optional") => Imdsv2::Optional,
        Some("required") => Imdsv2::Required,
        Some(other) => {
            return Err(AnnotationError {
                annotation: EC2_IMDSV2,
                value: other.to_owned(),
                expected: "\"optional\" (the default) or \"required\"".into(),
            });
        }
    };
    let datasource_hint = match annotations.get(DATASOURCE_HINT) {
        None => HintChoice::Auto,
        Some(value) => HintChoice::parse(value)
            .filter(|choice| !matches!(choice, HintChoice::Only(f) if !flavors.contains(f)))
            .ok_or_else(|| AnnotationError {
                annotation: DATASOURCE_HINT,
                value: value.clone(),
                expected: format!(
                    "\"auto\" (the default), \"none\", or one of the flavours {METADATA_FLAVORS} lists ({})",
                    if flavors.is_empty() {
                        "it lists none".to_owned()
                    } else {
                        flavors.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                    }
                ),
            })?,
    };
    let hop_limit = match annotations.get(HOP_LIMIT) {
        None => contract::DEFAULT_HOP_LIMIT,
        Some(value) => value
            .parse::<u8>()
            .ok()
            .filter(|n| (1..=contract::MAX_HOP_LIMIT).contains(n))
            .ok_or_else(|| AnnotationError {
                annotation: HOP_LIMIT,
                value: value.clone(),
                expected: format!(
                    "a whole number from 1 to {}: 1 (the default) serves the guest's own processes, 2 also \
                     containers behind a NAT or bridge inside the guest",
                    contract::MAX_HOP_LIMIT
                ),
            })?,
    };
    Ok(ImdsSettings {
        token_expiration_seconds,
        hop_limit,
        bridge_name,
        audiences,
        default_token,
        flavors,
        user_data_secret,
        ec2_imdsv2,
        datasource_hint,
    })
}

/// A Kubernetes object name (RFC 1123 subdomain): 1–253 of `a-z0-9-.`,
/// alphanumeric at both ends.
fn check_object_name(name: &str) -> Result<(), &'static str> {
    let valid = (1..=253).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid { Ok(()) } else { Err("lowercase letters, digits, '-' and '.', at most 253") }
}

/// `" sts.amazonaws.com , vault,vault"` → `["sts.amazonaws.com", "vault"]`.
fn parse_audiences(value: &str) -> Result<Vec<String>, String> {
    let mut audiences: Vec<String> = Vec::new();
    for item in value.split(',') {
        let audience = item.trim();
        contract::check_audience(audience)?;
        if !audiences.iter().any(|a| a == audience) {
            audiences.push(audience.to_owned());
        }
    }
    if audiences.len() > contract::MAX_AUDIENCES {
        return Err(format!("{} audiences", audiences.len()));
    }
    Ok(audiences)
}

/// `"True"`, `" true"`, `"yes"`, `"on"`, `"1"`: meant as the opt-in, but not it.
pub fn is_near_miss(value: &str) -> bool {
    let v = value.trim().to_ascii_lowercase();
    value != "true" && matches!(v.as_str(), "true" | "yes" | "y" | "on" | "1" | "enabled")
}

/// What a label [`ENABLED`] that is not exactly "true" but meant it says.
pub fn label_warning(labels: &BTreeMap<String, String>) -> Option<String> {
    labels
        .get(ENABLED)
        .filter(|v| is_near_miss(v))
        .map(|v| format!("label {ENABLED} is {v:?}: only exactly \"true\" enables the IMDS"))
}

/// Advice for the user (returned as admission warnings, which kubectl
/// prints): near misses that would otherwise be silently ignored.
pub fn warnings(annotations: &BTreeMap<String, String>) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(v) = annotations.get(ENABLED)
        && is_near_miss(v)
    {
        warnings.push(format!("annotation {ENABLED} is {v:?}: only exactly \"true\" enables the IMDS"));
    }
    let flavors =
        annotations.get(METADATA_FLAVORS).and_then(|f| contract::parse_flavors(f).ok()).unwrap_or_default();
    if annotations.contains_key(USER_DATA_SECRET) && flavors.is_empty() {
        warnings.push(format!("annotation {USER_DATA_SECRET} has no effect without {METADATA_FLAVORS}"));
    }
    if annotations.contains_key(DATASOURCE_HINT) && flavors.is_empty() {
        warnings.push(format!("annotation {DATASOURCE_HINT} has no effect without {METADATA_FLAVORS}"));
    }
    if annotations.contains_key(EC2_IMDSV2)
        && !flavors.iter().any(|f| matches!(f, Flavor::Ec2 | Flavor::Openstack))
    {
        warnings.push(format!("annotation {EC2_IMDSV2} has no effect without the ec2 or openstack flavour"));
    }
    if annotations.get(EC2_IMDSV2).is_some_and(|v| v == "required")
        && flavors.iter().any(|f| matches!(f, Flavor::Nocloud | Flavor::Openstack))
    {
        warnings.push(format!(
            "annotation {EC2_IMDSV2} \"required\" covers only the EC2 paths: the nocloud and openstack \
             flavours serve the same user-data without a session"
        ));
    }
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX) && !KNOWN.contains(&k.as_str())) {
        warnings.push(format!("annotation {key} is not one kubevirt-imds knows; it is ignored"));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn required_imdsv2_next_to_session_less_flavours_is_warned_about() {
        let warned = |flavors: &str| {
            warnings(&annotations(&[
                (ENABLED, "true"),
                (METADATA_FLAVORS, flavors),
                (EC2_IMDSV2, "required"),
            ]))
            .iter()
            .any(|w| w.contains("covers only the EC2 paths"))
        };
        assert!(warned("ec2,nocloud") && warned("openstack"));
        assert!(!warned("ec2"));
    }

    #[test]
    fn only_exactly_true_enables_as_label_or_annotation() {
        let none = annotations(&[]);
        assert!(opted_in(&none, &annotations(&[(ENABLED, "true")])));
        assert!(opted_in(&annotations(&[(ENABLED, "true")]), &none));
        for v in ["false", "True", "TRUE", "yes", "1", "", " true"] {
            assert!(!opted_in(&none, &annotations(&[(ENABLED, v)])), "{v:?}");
            assert!(!opted_in(&annotations(&[(ENABLED, v)]), &none), "{v:?}");
        }
        assert!(!opted_in(&none, &none));
    }

    #[test]
    fn near_misses_of_the_label_are_named() {
        for v in ["True", " true", "yes", "on", "1", "Enabled"] {
            let w = label_warning(&annotations(&[(ENABLED, v)])).unwrap_or_else(|| panic!("{v:?}"));
            assert!(w.contains("label imds.kubevirt.io/enabled"), "{w}");
        }
        for v in ["true", "false", "no", ""] {
            assert_eq!(label_warning(&annotations(&[(ENABLED, v)])), None, "{v:?}");
        }
    }

    #[test]
    fn defaults() {
        assert_eq!(
            settings(&annotations(&[(ENABLED, "true")])),
            Ok(ImdsSettings {
                token_expiration_seconds: 3600,
                bridge_name: None,
                audiences: vec![],
                default_token: true,
                flavors: vec![],
                user_data_secret: None,
                ec2_imdsv2: Imdsv2::Optional,
                datasource_hint: HintChoice::Auto,
                hop_limit: 1,
            })
        );
    }

    #[test]
    fn valid_values_are_taken() {
        let a = annotations(&[(TOKEN_EXPIRATION_SECONDS, "600"), (BRIDGE_NAME, "k6t-net1")]);
        assert_eq!(
            settings(&a),
            Ok(ImdsSettings {
                token_expiration_seconds: 600,
                bridge_name: Some("k6t-net1".into()),
                audiences: vec![],
                default_token: true,
                flavors: vec![],
                user_data_secret: None,
                ec2_imdsv2: Imdsv2::Optional,
                datasource_hint: HintChoice::Auto,
                hop_limit: 1,
            })
        );
        let a = annotations(&[(TOKEN_EXPIRATION_SECONDS, "4294967296")]);
        assert_eq!(settings(&a).unwrap().token_expiration_seconds, 1 << 32);
        assert_eq!(settings(&annotations(&[(HOP_LIMIT, "2")])).unwrap().hop_limit, 2);
        assert_eq!(settings(&annotations(&[(HOP_LIMIT, "64")])).unwrap().hop_limit, 64);
    }

    #[test]
    fn malformed_values_are_refused_naming_the_annotation_and_the_form() {
        for bad in ["soon", "599", "0", "-3600", "3600s", "1e4", "4294967297", ""] {
            let err = settings(&annotations(&[(TOKEN_EXPIRATION_SECONDS, bad)])).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(TOKEN_EXPIRATION_SECONDS) && text.contains("600"), "{text}");
        }
        for bad in ["", "a/b", "this-is-way-too-long", "k6t eth0", ".."] {
            let err = settings(&annotations(&[(BRIDGE_NAME, bad)])).unwrap_err();
            assert!(err.to_string().contains(BRIDGE_NAME), "{err}");
        }
        for bad in ["0", "65", "-1", "1.5", " 1", "two", "", "256"] {
            let err = settings(&annotations(&[(HOP_LIMIT, bad)])).unwrap_err();
            assert!(err.to_string().contains(HOP_LIMIT) && err.to_string().contains("1 to 64"), "{err}");
        }
    }

    #[test]
    fn audiences_are_trimmed_and_deduplicated() {
        let a = annotations(&[(TOKEN_AUDIENCES, " sts.amazonaws.com , vault,vault,  spiffe://example.org ")]);
        assert_eq!(settings(&a).unwrap().audiences, ["sts.amazonaws.com", "vault", "spiffe://example.org"]);
        let eight: Vec<String> = (0..8).map(|i| format!("aud{i}")).collect();
        let a = annotations(&[(TOKEN_AUDIENCES, &eight.join(","))]);
        assert_eq!(settings(&a).unwrap().audiences.len(), 8);
    }

    #[test]
    fn bad_audiences_are_refused() {
        let nine: String = (0..9).map(|i| format!("aud{i}")).collect::<Vec<_>>().join(",");
        let long = "a".repeat(300);
        for bad in ["", "vault,,sts", ",", "a\tb", "a\u{7}", nine.as_str(), long.as_str()] {
            let err = settings(&annotations(&[(TOKEN_AUDIENCES, bad)])).unwrap_err();
            assert_eq!(err.annotation, TOKEN_AUDIENCES, "{bad:?}");
            assert!(err.to_string().contains("comma-separated"), "{err}");
        }
    }

    #[test]
    fn default_token_switch() {
        assert!(settings(&annotations(&[])).unwrap().default_token);
        assert!(settings(&annotations(&[(DEFAULT_TOKEN, "true")])).unwrap().default_token);
        assert!(!settings(&annotations(&[(DEFAULT_TOKEN, "false")])).unwrap().default_token);
        for bad in ["no", "False", "0", ""] {
            let err = settings(&annotations(&[(DEFAULT_TOKEN, bad)])).unwrap_err();
            assert_eq!(err.annotation, DEFAULT_TOKEN);
        }
    }

    #[test]
    fn metadata_annotations() {
        let a = annotations(&[
            (METADATA_FLAVORS, "ec2, nocloud"),
            (USER_DATA_SECRET, "my-vm.userdata"),
            (EC2_IMDSV2, "required"),
        ]);
        let s = settings(&a).unwrap();
        assert_eq!(s.flavors, [Flavor::Nocloud, Flavor::Ec2]);
        assert_eq!(s.user_data_secret.as_deref(), Some("my-vm.userdata"));
        assert_eq!(s.ec2_imdsv2, Imdsv2::Required);
        for (annotation, bad) in [
            (METADATA_FLAVORS, "nocloud,gce"),
            (METADATA_FLAVORS, "EC2"),
            (USER_DATA_SECRET, "My_Secret"),
            (USER_DATA_SECRET, "-x"),
            (USER_DATA_SECRET, ""),
            (EC2_IMDSV2, "v2"),
        ] {
            let err = settings(&annotations(&[(annotation, bad)])).unwrap_err();
            assert_eq!(err.annotation, annotation, "{bad:?}");
            assert!(err.to_string().contains("expected"), "{err}");
        }
        let w = warnings(&annotations(&[(USER_DATA_SECRET, "s"), (EC2_IMDSV2, "required")]));
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn datasource_hint() {
        let with = |hint: &str| {
            settings(&annotations(&[(METADATA_FLAVORS, "nocloud,ec2"), (DATASOURCE_HINT, hint)]))
        };
        assert_eq!(with("auto").unwrap().datasource_hint, HintChoice::Auto);
        assert_eq!(with("none").unwrap().datasource_hint, HintChoice::Off);
        assert_eq!(with("ec2").unwrap().datasource_hint, HintChoice::Only(Flavor::Ec2));
        for bad in ["openstack", "EC2", "", "gce"] {
            let err = with(bad).unwrap_err();
            assert_eq!(err.annotation, DATASOURCE_HINT, "{bad:?}");
            assert!(err.to_string().contains("nocloud, ec2"), "{err}");
        }
        let none = settings(&annotations(&[(DATASOURCE_HINT, "nocloud")])).unwrap_err();
        assert!(none.to_string().contains("it lists none"), "{none}");
        assert_eq!(warnings(&annotations(&[(DATASOURCE_HINT, "none")])).len(), 1);
        assert!(warnings(&annotations(&[(DATASOURCE_HINT_APPLIED, "x"), (ENABLED, "true")])).is_empty());
    }

    #[test]
    fn near_misses_are_warned_about() {
        let w = warnings(&annotations(&[(ENABLED, "True"), ("imds.kubevirt.io/token-expiry", "600")]));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("only exactly \"true\""));
        assert!(w[1].contains("imds.kubevirt.io/token-expiry"));
        assert!(warnings(&annotations(&[(ENABLED, "true"), (BRIDGE_NAME, "k6t-eth0")])).is_empty());
        assert!(warnings(&annotations(&[(ENABLED, "false")])).is_empty());
    }
}
