//! The options of what the API serves ([`ApiArgs`], flattened into `run`
//! and `serve` in [`crate::cli`]), with an environment variable for every
//! flag (the webhook injects env vars from the downward API).

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    api::{ImdsState, cloud::CloudState},
    cloud::{InstanceFacts, data::DataSources, imdsv2::Sessions, ssh_keys::SshKeySources},
    contract,
    guest_binaries::GuestBinaries,
    http_server::Limits,
    metadata::{AwsRole, Identity},
    token::TokenSet,
};

/// What the IMDS serves, and how it bounds its clients: shared by
/// `run` and `serve`.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Namespace of the VM.
    #[arg(long, env = contract::ENV_NAMESPACE, value_parser = non_empty)]
    pub namespace: String,

    /// ServiceAccount the VM's pod runs as.
    #[arg(long, env = contract::ENV_SERVICE_ACCOUNT_NAME, value_parser = non_empty)]
    pub service_account_name: String,

    /// Name of the VirtualMachine(Instance).
    #[arg(long, env = contract::ENV_VM_NAME, value_parser = non_empty)]
    pub vm_name: String,

    /// The projected token volume: `token` (the API server's audience) and
    /// `audience-<n>` for the n-th `--token-audience`; re-read on every request.
    #[arg(long, env = contract::ENV_TOKEN_DIR, default_value = contract::TOKEN_DIR)]
    pub token_dir: PathBuf,

    /// Extra token audiences, in the order of their files (repeat, or comma-separate).
    #[arg(long = "token-audience", env = contract::ENV_TOKEN_AUDIENCES, value_delimiter = ',', value_parser = audience)]
    pub token_audiences: Vec<String>,

    /// Whether the API-server-audience token (`token`) is served.
    #[arg(long, env = contract::ENV_DEFAULT_TOKEN, default_value_t = true, action = clap::ArgAction::Set)]
    pub default_token: bool,

    /// The ServiceAccount's AWS IRSA role (`GET /v1/aws`).
    #[arg(long, env = contract::ENV_AWS_ROLE_ARN, value_parser = non_empty)]
    pub aws_role_arn: Option<String>,

    /// The audience AWS STS expects in the web identity token.
    #[arg(long, env = contract::ENV_AWS_AUDIENCE, default_value = contract::DEFAULT_AWS_AUDIENCE, value_parser = audience)]
    pub aws_audience: String,

    /// Cloud metadata formats to serve besides `/v1` (repeat, or comma-separate).
    #[arg(long = "metadata-flavor", env = contract::ENV_METADATA_FLAVORS, value_delimiter = ',', value_enum)]
    pub metadata_flavors: Vec<contract::Flavor>,

    /// The VM's firmware UUID, served as the instance-id (NoCloud, EC2) and
    /// OpenStack's `uuid`, as KubeVirt's cloud-init disks do; the webhook
    /// always sets it. Without it the instance-id is `<vm>.<namespace>`.
    #[arg(long, env = contract::ENV_FIRMWARE_UUID, value_parser = firmware_uuid)]
    pub firmware_uuid: Option<String>,

    /// The guest's hostname in the metadata (default: the VM name).
    #[arg(long, env = contract::ENV_HOSTNAME, value_parser = non_empty)]
    pub hostname: Option<String>,

    /// Directory of the user-data Secret (`userdata`, `vendordata`, `networkdata`).
    #[arg(long, env = contract::ENV_USER_DATA_DIR)]
    pub user_data_dir: Option<PathBuf>,

    /// Directory of a separate network-data Secret (`networkdata`).
    #[arg(long, env = contract::ENV_NETWORK_DATA_DIR)]
    pub network_data_dir: Option<PathBuf>,

    /// Directories of the VM's `sshPublicKey` access-credential Secrets
    /// (repeat, or comma-separate), served as the flavours' public keys.
    #[arg(long = "ssh-key-dir", env = contract::ENV_SSH_KEY_DIRS, value_delimiter = ',')]
    pub ssh_key_dirs: Vec<PathBuf>,

    /// IMDSv2 sessions of the EC2 flavour: `optional` or `required`.
    #[arg(long, env = contract::ENV_EC2_IMDSV2, value_enum, default_value_t = contract::Imdsv2::Optional)]
    pub ec2_imdsv2: contract::Imdsv2,

    /// The region the cloud metadata names (EC2 `placement/region` and the
    /// identity document's `region`, which the AWS SDK for Go and Afterburn
    /// read). botocore (boto3, the AWS CLI) ignores it and derives the region
    /// from `--availability-zone` by dropping its last character: where SDKs
    /// should find a real region, set both (e.g. `us-east-1` / `us-east-1a`).
    #[arg(long, env = contract::ENV_REGION, default_value = contract::DEFAULT_REGION, value_parser = placement_name)]
    pub region: String,

    /// The availability zone the cloud metadata names (EC2
    /// `placement/availability-zone`, OpenStack `availability_zone`). Some
    /// AWS SDKs take its last character off to get the region: see `--region`.
    #[arg(long, env = contract::ENV_AVAILABILITY_ZONE, default_value = contract::DEFAULT_AVAILABILITY_ZONE, value_parser = placement_name)]
    pub availability_zone: String,

    /// The guest helper's builds to serve under /v1/guest/ (missing files
    /// are not served; see `imds_api::GUEST_BINARIES` for the names).
    #[arg(long, env = contract::ENV_GUEST_BINARIES_DIR, default_value = contract::GUEST_BINARIES_DIR)]
    pub guest_binaries_dir: PathBuf,

    /// Most guest connections served at once; more wait in the backlog.
    #[arg(long, env = "IMDS_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_connections: u32,

    /// Deadline for a request head, also the keep-alive idle timeout (e.g. `10s`).
    #[arg(long, env = "IMDS_HEAD_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub head_timeout: Duration,

    /// Deadline for writing each response: a client that stops reading
    /// loses its connection then (e.g. `10s`).
    #[arg(long, env = "IMDS_RESPONSE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub response_timeout: Duration,
}

impl ApiArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections as usize,
            head_timeout: self.head_timeout,
            response_timeout: self.response_timeout,
            ..Limits::default()
        }
    }

    /// The state the API serves from.
    pub fn state(&self) -> ImdsState {
        ImdsState {
            identity: Identity {
                namespace: self.namespace.clone(),
                service_account_name: self.service_account_name.clone(),
                vm_name: self.vm_name.clone(),
            },
            tokens: TokenSet::new(&self.token_dir, self.default_token, &self.token_audiences),
            aws: self
                .aws_role_arn
                .clone()
                .map(|role_arn| AwsRole { role_arn, audience: self.aws_audience.clone() }),
            cloud: CloudState {
                facts: InstanceFacts::new(&self.vm_name, &self.namespace, self.hostname.as_deref())
                    .with_firmware_uuid(self.firmware_uuid.as_deref())
                    .with_placement(&self.region, &self.availability_zone),
                flavors: self.metadata_flavors.iter().copied().collect(),
                data: DataSources {
                    user_dir: self.user_data_dir.clone(),
                    network_dir: self.network_data_dir.clone(),
                },
                ssh_keys: SshKeySources { dirs: self.ssh_key_dirs.clone() },
                imdsv2: self.ec2_imdsv2,
                sessions: Sessions::default(),
            },
            guest_binaries: GuestBinaries::scan(&self.guest_binaries_dir),
        }
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() { Err("must not be empty".into()) } else { Ok(s.to_owned()) }
}

/// A UUID, in KubeVirt's lower-case hyphenated form (it is served as is).
fn firmware_uuid(s: &str) -> Result<String, String> {
    uuid::Uuid::try_parse(s.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| format!("not a UUID ({e}): expected the VM's spec.domain.firmware.uuid"))
}

fn audience(s: &str) -> Result<String, String> {
    contract::check_audience(s).map(|()| s.to_owned())
}

fn placement_name(s: &str) -> Result<String, String> {
    contract::check_placement_name(s).map(|()| s.to_owned()).map_err(str::to_owned)
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. `10s` or `500ms`)"))?;
    if d.is_zero() || d > Duration::from_secs(3600) {
        return Err("must be between 1ms and 1h".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ApiArgs,
    }

    fn parse(extra: &[&str]) -> Result<ApiArgs, clap::Error> {
        let base = ["x", "--namespace", "ns", "--service-account-name", "sa", "--vm-name", "vm"];
        Cli::try_parse_from(base.iter().chain(extra)).map(|c| c.args)
    }

    #[test]
    fn defaults_are_sane() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.head_timeout, Duration::from_secs(10));
        assert_eq!((a.region.as_str(), a.availability_zone.as_str()), ("kubevirt", "kubevirt"));
    }

    #[test]
    fn region_and_zone_reach_the_facts() {
        let a = parse(&["--region", "us-east-1", "--availability-zone", "us-east-1a"]).unwrap();
        let facts = a.state().cloud.facts;
        assert_eq!((facts.region.as_str(), facts.availability_zone.as_str()), ("us-east-1", "us-east-1a"));
        let longest = "a".repeat(63);
        assert_eq!(parse(&["--region", &longest]).unwrap().region, longest);
    }

    #[test]
    fn the_firmware_uuid_is_the_instance_id_in_kubevirt_s_form() {
        let a = parse(&["--firmware-uuid", "5A9FC181-957E-5C32-9E5A-2DE5E9673531"]).unwrap();
        assert_eq!(a.state().cloud.facts.instance_id, "5a9fc181-957e-5c32-9e5a-2de5e9673531");
        assert_eq!(parse(&[]).unwrap().state().cloud.facts.instance_id, "vm.ns");
        for bad in ["", "vm.ns", "5a9fc181-957e-5c32-9e5a", "../../etc/passwd"] {
            let err = parse(&["--firmware-uuid", bad]).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(err.to_string().contains("not a UUID"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for bad in [&["--head-timeout", "soon"][..], &["--head-timeout", "0s"], &["--max-connections", "0"]] {
            let err = parse(bad).expect_err(&format!("{bad:?} accepted"));
            assert!(err.to_string().contains("invalid value"), "{bad:?}: {err}");
        }
        let too_long = "a".repeat(64);
        for (flag, bad) in [
            ("--region", ""),
            ("--region", "us east"),
            ("--region", "us-east-1\n"),
            ("--region", "a/b"),
            ("--region", "ünï"),
            ("--availability-zone", "a,b"),
            ("--availability-zone", &too_long),
        ] {
            let err = parse(&[flag, bad]).expect_err(&format!("{flag} {bad:?} accepted"));
            assert!(err.to_string().contains("1-63 characters"), "{flag} {bad:?}: {err}");
        }
        let blank = ["x", "--namespace", " ", "--service-account-name", "sa", "--vm-name", "vm"];
        let err = Cli::try_parse_from(blank).err().expect("blank namespace accepted");
        assert!(err.to_string().contains("must not be empty"), "{err}");
        let missing = Cli::try_parse_from(["x", "--namespace", "ns"]).err().expect("missing names accepted");
        assert!(missing.to_string().contains("--service-account-name"), "{missing}");
    }
}
