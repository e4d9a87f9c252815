//! One definition of every name two of the binaries must agree on: what
//! the webhook injects and the sidecar expects, what the node agent creates
//! in a pod and the sidecar binds to, where the agent finds the sidecar.

use std::path::{Path, PathBuf};

/// The IMDS address and port (the address also lives in the eBPF ABI,
/// `imds_ebpf::abi::IMDS_ADDR`, which the programs match on).
pub const IMDS_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 169, 254);
/// [`IMDS_IP`] as text: the `Host` the sidecar accepts (with or without `:80`).
pub const IMDS_HOST: &str = "169.254.169.254";
pub const IMDS_PORT: u16 = 80;

/// The veth end the node agent gives the IMDS address; the sidecar binds to
/// it and admits only what arrives through it.
pub const SIDECAR_IF: &str = "imds-sidecar";
/// Its peer: guest traffic is redirected into it, replies are picked up on it.
pub const REDIRECT_IF: &str = "imds-redirect";

/// The user and group the sidecar runs as: KubeVirt's non-root user for
/// virt-launcher pods (`NonRootUID` in KubeVirt's `pkg/util/util.go`).
pub const SIDECAR_UID: i64 = 107;

/// The emptyDir volume the webhook adds to the pod, mounted in the sidecar
/// only, at [`RUN_DIR`]: it holds the sidecar's unix socket
/// ([`SOCKET_NAME`]), where the node agent finds the pod (see
/// [`kubelet_socket_path`]) and the startup probe asks for readiness.
pub const RUN_VOLUME: &str = "kubevirt-imds-run";
pub const RUN_DIR: &str = "/var/run/kubevirt-imds/run";
pub const ENV_RUN_DIR: &str = "IMDS_RUN_DIR";
pub const SOCKET_NAME: &str = "sidecar.sock";

/// Where the kubelet keeps pod `pod_uid`'s emptyDir `volume` on the node:
/// `<kubelet root>/pods/<uid>/volumes/kubernetes.io~empty-dir/<volume>`
/// (the layout KubeVirt's virt-handler relies on for virt-launcher's own
/// socket, `pkg/virt-handler/cmd-client/client.go`).
pub fn kubelet_empty_dir(kubelet_root: &Path, pod_uid: &str, volume: &str) -> PathBuf {
    kubelet_root.join("pods").join(pod_uid).join("volumes").join("kubernetes.io~empty-dir").join(volume)
}

/// The sidecar's socket of pod `pod_uid`, as the node agent sees it.
pub fn kubelet_socket_path(kubelet_root: &Path, pod_uid: &str) -> PathBuf {
    kubelet_empty_dir(kubelet_root, pod_uid, RUN_VOLUME).join(SOCKET_NAME)
}

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "kubevirt-imds";
/// Name of the projected token volume.
pub const TOKEN_VOLUME: &str = "kubevirt-imds-token";
/// Where the token volume is mounted in the sidecar.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubevirt-imds/serviceaccount";
/// The default token's file (audience: the API server).
pub const TOKEN_FILE_NAME: &str = "token";

/// The file of the `index`-th configured audience. Positional, so that no
/// audience string ever becomes part of a path.
pub fn audience_file_name(index: usize) -> String {
    format!("audience-{index}")
}

/// At most this many audiences per VM (each is a token the kubelet mints
/// and rotates).
pub const MAX_AUDIENCES: usize = 8;
/// Longest accepted audience, in bytes.
pub const MAX_AUDIENCE_LEN: usize = 256;

/// An audience as a projected token source takes it: non-empty, at most
/// [`MAX_AUDIENCE_LEN`] bytes, no control characters, no comma (the
/// separator of lists of audiences), no surrounding whitespace.
pub fn check_audience(audience: &str) -> Result<(), String> {
    if audience.is_empty() {
        return Err("an audience is empty".into());
    }
    if audience.len() > MAX_AUDIENCE_LEN {
        return Err(format!("an audience is longer than {MAX_AUDIENCE_LEN} bytes"));
    }
    if audience.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!("audience {audience:?} contains a control character or a comma"));
    }
    if audience.trim() != audience {
        return Err(format!("audience {audience:?} has surrounding whitespace"));
    }
    Ok(())
}

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

/// The metadata formats a VM can ask for besides the IMDS's own API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Flavor {
    /// NoCloud over HTTP at `/nocloud/`; cloud-init picks it from the SMBIOS
    /// serial `ds=nocloud;s=http://169.254.169.254/nocloud/;dsmode=net`
    /// (the webhook sets it; a test keeps this text equal to [`SEED_SERIAL`]).
    Nocloud,
    /// The OpenStack metadata service at `/openstack/` (with its EC2-compatible tree).
    Openstack,
    /// The EC2 instance metadata service at `/latest/` and dated versions, with IMDSv2 sessions.
    Ec2,
}

impl Flavor {
    pub const ALL: [Flavor; 3] = [Flavor::Nocloud, Flavor::Openstack, Flavor::Ec2];

    pub fn name(self) -> &'static str {
        match self {
            Flavor::Nocloud => "nocloud",
            Flavor::Openstack => "openstack",
            Flavor::Ec2 => "ec2",
        }
    }
}

/// `"nocloud, ec2"` → `[Nocloud, Ec2]` (trimmed, deduplicated, sorted).
pub fn parse_flavors(list: &str) -> Result<Vec<Flavor>, String> {
    let mut flavors = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let flavor = Flavor::ALL
            .into_iter()
            .find(|f| f.name() == item)
            .ok_or_else(|| format!("unknown flavour {item:?}"))?;
        flavors.push(flavor);
    }
    flavors.sort();
    flavors.dedup();
    Ok(flavors)
}

/// IMDSv2 sessions of the EC2 flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Imdsv2 {
    /// Requests without a session token are served (cloud-init off AWS
    /// asks for none); a presented token must still be valid.
    Optional,
    /// Every request needs a session token (`PUT /latest/api/token`).
    Required,
}

/// Where the webhook mounts user-data, for the sidecar.
pub const USER_DATA_DIR: &str = "/var/run/kubevirt-imds/user-data";
pub const NETWORK_DATA_DIR: &str = "/var/run/kubevirt-imds/network-data";
/// Where the webhook mounts the VM's `sshPublicKey` Secrets, one
/// directory per Secret: `<SSH_KEYS_DIR>/<n>`, in the VMI's order.
pub const SSH_KEYS_DIR: &str = "/var/run/kubevirt-imds/ssh-keys";
/// Volume the webhook adds for `imds.kubevirt.io/user-data-secret`.
pub const USER_DATA_VOLUME: &str = "kubevirt-imds-user-data";

pub const ENV_METADATA_FLAVORS: &str = "IMDS_METADATA_FLAVORS";
pub const ENV_HOSTNAME: &str = "IMDS_HOSTNAME";
pub const ENV_USER_DATA_DIR: &str = "IMDS_USER_DATA_DIR";
pub const ENV_NETWORK_DATA_DIR: &str = "IMDS_NETWORK_DATA_DIR";
/// Comma-separated directories (see [`SSH_KEYS_DIR`]).
pub const ENV_SSH_KEY_DIRS: &str = "IMDS_SSH_KEY_DIRS";
pub const ENV_EC2_IMDSV2: &str = "IMDS_EC2_IMDSV2";
/// Where the VM claims to run, for the cloud flavours (EC2 `placement/`,
/// the identity document, OpenStack `availability_zone`).
pub const ENV_REGION: &str = "IMDS_REGION";
pub const ENV_AVAILABILITY_ZONE: &str = "IMDS_AVAILABILITY_ZONE";
pub const DEFAULT_REGION: &str = "kubevirt";
pub const DEFAULT_AVAILABILITY_ZONE: &str = "kubevirt";

/// The AWS IRSA audience when the ServiceAccount names none.
pub const DEFAULT_AWS_AUDIENCE: &str = "sts.amazonaws.com";
/// The binaries' paths in the image (the startup probe executes the sidecar's).
pub const SIDECAR_BINARY_PATH: &str = "/usr/local/bin/kubevirt-imds-sidecar";
pub const AGENT_BINARY_PATH: &str = "/usr/local/bin/kubevirt-imds-agent";
pub const WEBHOOK_BINARY_PATH: &str = "/usr/local/bin/kubevirt-imds-webhook";

/// Environment of the sidecar (each also a command-line flag).
pub const ENV_NAMESPACE: &str = "IMDS_NAMESPACE";
pub const ENV_POD_NAME: &str = "IMDS_POD_NAME";
pub const ENV_SERVICE_ACCOUNT_NAME: &str = "IMDS_SERVICE_ACCOUNT_NAME";
pub const ENV_VM_NAME: &str = "IMDS_VM_NAME";
/// The VM's firmware UUID: the instance-id of every metadata flavour and
/// OpenStack's `uuid`, as KubeVirt's own cloud-init disks give them.
pub const ENV_FIRMWARE_UUID: &str = "IMDS_FIRMWARE_UUID";
pub const ENV_TOKEN_DIR: &str = "IMDS_TOKEN_DIR";
/// Where the sidecar finds the guest helper's builds it serves under
/// `imds_api::GUEST_PATH` ([`GUEST_BINARIES_DIR`] in the image; `cargo
/// xtask build` leaves them in `target/guest-binaries/`).
pub const ENV_GUEST_BINARIES_DIR: &str = "IMDS_GUEST_BINARIES_DIR";
pub const GUEST_BINARIES_DIR: &str = "/usr/share/kubevirt-imds/guest";
/// Comma-separated, in file order (see [`audience_file_name`]).
pub const ENV_TOKEN_AUDIENCES: &str = "IMDS_TOKEN_AUDIENCES";
/// `false` when the API-server-audience token is not mounted.
pub const ENV_DEFAULT_TOKEN: &str = "IMDS_DEFAULT_TOKEN";
pub const ENV_AWS_ROLE_ARN: &str = "IMDS_AWS_ROLE_ARN";
pub const ENV_AWS_AUDIENCE: &str = "IMDS_AWS_AUDIENCE";
pub const ENV_BRIDGE_NAME: &str = "IMDS_BRIDGE_NAME";
pub const ENV_LOG_FORMAT: &str = "IMDS_LOG_FORMAT";
/// The IP TTL of everything the sidecar sends (its SYN-ACKs included), like
/// AWS's IMDSv2 hop limit: 1 reaches the guest's own processes only; a
/// container behind a NAT or bridge inside the guest needs 2.
pub const ENV_HOP_LIMIT: &str = "IMDS_HOP_LIMIT";
pub const DEFAULT_HOP_LIMIT: u8 = 1;
pub const MAX_HOP_LIMIT: u8 = 64;

/// A region or availability zone: served as a one-line leaf and inside
/// JSON, so 1–63 bytes of `[A-Za-z0-9._-]` (AWS's own names fit). Checked
/// by the sidecar's `--region`/`--availability-zone` and the webhook's
/// `--metadata-region`/`--metadata-availability-zone` alike.
pub fn check_placement_name(name: &str) -> Result<(), &'static str> {
    let valid = (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid { Ok(()) } else { Err("must be 1-63 characters from A-Z, a-z, 0-9, '.', '_', '-'") }
}

/// Linux interface names: 1–15 bytes, no `/`, `:`, whitespace or control
/// characters, not `.` or `..`. Checked for `--bridge` and for the
/// `imds.kubevirt.io/bridge-name` annotation alike.
pub fn check_interface_name(name: &str) -> Result<(), &'static str> {
    let valid = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if valid { Ok(()) } else { Err("not a valid interface name (1-15 bytes, no '/', ':' or whitespace)") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_the_address() {
        assert_eq!(IMDS_HOST, IMDS_IP.to_string());
    }

    #[test]
    fn audience_rules() {
        for ok in [
            "sts.amazonaws.com",
            "vault",
            "https://kubernetes.default.svc",
            "spiffe://example.org/ns/x",
            "ünïcode",
        ] {
            assert_eq!(check_audience(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_AUDIENCE_LEN + 1);
        for bad in ["", " vault", "vault ", "a,b", "a\u{0}b", "a\nb", long.as_str()] {
            assert!(check_audience(bad).is_err(), "{bad:?}");
        }
        assert_eq!(audience_file_name(3), "audience-3");
    }

    #[test]
    fn the_help_shows_the_seed_serial() {
        use clap::ValueEnum as _;
        let value = Flavor::Nocloud.to_possible_value().unwrap();
        let help = value.get_help().unwrap().to_string();
        assert!(help.contains(SEED_SERIAL), "{help}");
    }

    #[test]
    fn flavour_lists() {
        assert_eq!(parse_flavors(""), Ok(vec![]));
        assert_eq!(parse_flavors(" ec2 ,nocloud,ec2"), Ok(vec![Flavor::Nocloud, Flavor::Ec2]));
        assert_eq!(parse_flavors("nocloud,openstack,ec2"), Ok(Flavor::ALL.to_vec()));
        assert!(parse_flavors("gce").unwrap_err().contains("gce"));
        assert!(parse_flavors("NoCloud").is_err());
    }
}
