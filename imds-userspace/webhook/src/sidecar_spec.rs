//! The container and volumes the webhook adds to a virt-launcher pod.

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction, ObjectFieldSelector,
        Probe, ProjectedVolumeSource, SeccompProfile, SecretVolumeSource, SecurityContext,
        ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use super::{annotations::ImdsSettings, qos::QosClass, sidecar_resources::SidecarResources};
use crate::contract;

/// How the sidecar runs in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InjectionMode {
    /// An init container with `restartPolicy: Always` (Kubernetes >= 1.29):
    /// started, and probed healthy, before the VM's `compute` container,
    /// and stopped after it.
    NativeSidecar,
    /// A plain container, for older clusters: it starts alongside
    /// `compute`, so a guest's very first request may race it.
    Container,
}

/// The webhook's configuration of what it injects.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarTemplate {
    pub image: String,
    pub image_pull_policy: String,
    pub resources: SidecarResources,
    pub mode: InjectionMode,
    /// Cluster-wide placement for the cloud metadata (`None`: the sidecar's default).
    pub region: Option<String>,
    pub availability_zone: Option<String>,
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The ServiceAccount's AWS IRSA role, read by the webhook at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsHint {
    pub role_arn: String,
    pub audience: String,
}

/// What the webhook learned about the pod, for the sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub vm_name: String,
    /// The VM's firmware UUID: the instance-id the sidecar serves.
    pub firmware_uuid: String,
    /// The guest's hostname (the pod's `spec.hostname`, which KubeVirt sets
    /// from the VMI).
    pub hostname: String,
    /// Pod volumes holding user-data and network-data, to mount whole.
    pub data: DataVolumes,
    /// KubeVirt's volumes of the VM's `sshPublicKey` Secrets, in order
    /// (see [`crate::ssh_keys`]).
    pub ssh_key_volumes: Vec<String>,
    /// The pod's QoS class before injection, which the sidecar must keep.
    pub qos: QosClass,
}

/// Names of pod volumes to mount into the sidecar for the metadata flavours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataVolumes {
    pub user: Option<String>,
    pub network: Option<String>,
}

/// The sidecar container for the VM of `pod`.
pub fn container(
    template: &SidecarTemplate,
    settings: &ImdsSettings,
    pod: &PodInfo,
    aws: Option<&AwsHint>,
) -> Container {
    let mut env = vec![
        env_field(contract::ENV_NAMESPACE, "metadata.namespace"),
        env_field(contract::ENV_POD_NAME, "metadata.name"),
        env_field(contract::ENV_SERVICE_ACCOUNT_NAME, "spec.serviceAccountName"),
        env_value(contract::ENV_VM_NAME, &pod.vm_name),
        env_value(contract::ENV_FIRMWARE_UUID, &pod.firmware_uuid),
        env_value(contract::ENV_TOKEN_DIR, contract::TOKEN_DIR),
        env_value(contract::ENV_LOG_FORMAT, "json"),
        env_value(contract::ENV_HOP_LIMIT, &settings.hop_limit.to_string()),
        // No ENV_RUN_DIR: the sidecar's default is RUN_DIR, where the run volume is mounted.
    ];
    if let Some(bridge) = &settings.bridge_name {
        env.push(env_value(contract::ENV_BRIDGE_NAME, bridge));
    }
    if !settings.audiences.is_empty() {
        env.push(env_value(contract::ENV_TOKEN_AUDIENCES, &settings.audiences.join(",")));
    }
    if !settings.default_token {
        env.push(env_value(contract::ENV_DEFAULT_TOKEN, "false"));
    }
    if let Some(aws) = aws {
        env.push(env_value(contract::ENV_AWS_ROLE_ARN, &aws.role_arn));
        env.push(env_value(contract::ENV_AWS_AUDIENCE, &aws.audience));
    }
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..Default::default()
    };
    // Read-write: the sidecar creates its socket there.
    let mut mounts = vec![VolumeMount {
        name: contract::RUN_VOLUME.into(),
        mount_path: contract::RUN_DIR.into(),
        ..Default::default()
    }];
    if has_tokens(settings) {
        mounts.push(mount(contract::TOKEN_VOLUME, contract::TOKEN_DIR));
    }
    if !settings.flavors.is_empty() {
        let names: Vec<&str> = settings.flavors.iter().map(|f| f.name()).collect();
        env.push(env_value(contract::ENV_METADATA_FLAVORS, &names.join(",")));
        env.push(env_value(contract::ENV_HOSTNAME, &pod.hostname));
        if settings.ec2_imdsv2 == contract::Imdsv2::Required {
            env.push(env_value(contract::ENV_EC2_IMDSV2, "required"));
        }
        if let Some(region) = &template.region {
            env.push(env_value(contract::ENV_REGION, region));
        }
        if let Some(zone) = &template.availability_zone {
            env.push(env_value(contract::ENV_AVAILABILITY_ZONE, zone));
        }
        // Whole volumes, not subPaths: the kubelet updates those when the
        // Secret changes, so a new user-data is served without a restart.
        if let Some(volume) = &pod.data.user {
            mounts.push(mount(volume, contract::USER_DATA_DIR));
            env.push(env_value(contract::ENV_USER_DATA_DIR, contract::USER_DATA_DIR));
        }
        if let Some(volume) = &pod.data.network {
            mounts.push(mount(volume, contract::NETWORK_DATA_DIR));
            env.push(env_value(contract::ENV_NETWORK_DATA_DIR, contract::NETWORK_DATA_DIR));
        }
        let key_dirs: Vec<String> =
            (0..pod.ssh_key_volumes.len()).map(|n| format!("{}/{n}", contract::SSH_KEYS_DIR)).collect();
        for (volume, dir) in pod.ssh_key_volumes.iter().zip(&key_dirs) {
            mounts.push(mount(volume, dir));
        }
        if !key_dirs.is_empty() {
            env.push(env_value(contract::ENV_SSH_KEY_DIRS, &key_dirs.join(",")));
        }
    }
    Container {
        name: contract::CONTAINER_NAME.into(),
        image: Some(template.image.clone()),
        image_pull_policy: Some(template.image_pull_policy.clone()),
        command: Some(vec![contract::SIDECAR_BINARY_PATH.into(), "run".into()]),
        env: Some(env),
        resources: template.resources.for_class(pod.qos),
        restart_policy: (template.mode == InjectionMode::NativeSidecar).then(|| "Always".into()),
        startup_probe: Some(startup_probe()),
        security_context: Some(security_context()),
        volume_mounts: Some(mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// Ready means the node agent has plumbed the pod and a request it sent
/// through the real data path (as a guest would) came back: as a native
/// sidecar, the kubelet starts `compute`, and so the VM, only then, so the
/// guest's first request finds the IMDS. 300 tries a second apart (5
/// minutes) cover an agent DaemonSet still rolling out onto the node; the
/// probe's failure message names what is missing (ARCHITECTURE.md).
fn startup_probe() -> Probe {
    Probe {
        exec: Some(ExecAction { command: Some(vec![contract::SIDECAR_BINARY_PATH.into(), "probe".into()]) }),
        period_seconds: Some(1),
        timeout_seconds: Some(3),
        failure_threshold: Some(300),
        ..Default::default()
    }
}

/// Nothing beyond what a restricted pod may have: the node agent does all
/// the privileged plumbing. Set on the container whatever the pod says, so
/// that a pod running as root (KubeVirt's Root feature gate) or without a
/// seccomp profile does not take this container with it. Uid and gid 107:
/// KubeVirt's own non-root user (also the pod's `fsGroup`).
fn security_context() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(contract::SIDECAR_UID),
        run_as_group: Some(contract::SIDECAR_UID),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

/// Where the sidecar's unix socket lives, for the node agent (which finds
/// it under the kubelet's pod directory) and the startup probe. An emptyDir
/// on the node's disk: the socket is a directory entry, no bytes, so 1Mi is
/// room to spare, and the agent sees it without a tmpfs mount to propagate.
pub fn run_volume() -> Volume {
    Volume {
        name: contract::RUN_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity("1Mi".into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Secret of `imds.kubevirt.io/user-data-secret`, when the VM asked
/// for metadata flavours.
pub fn user_data_volume(settings: &ImdsSettings) -> Option<Volume> {
    let secret = settings.user_data_secret.as_ref().filter(|_| !settings.flavors.is_empty())?;
    Some(Volume {
        name: contract::USER_DATA_VOLUME.into(),
        secret: Some(SecretVolumeSource { secret_name: Some(secret.clone()), ..Default::default() }),
        ..Default::default()
    })
}

fn has_tokens(settings: &ImdsSettings) -> bool {
    settings.default_token || !settings.audiences.is_empty()
}

/// The projected ServiceAccount tokens (the API server's audience unless
/// turned off, then one per extra audience, in order), mounted into the
/// sidecar only. `None` when the VM asked for no token at all. It works
/// whatever the pod's `automountServiceAccountToken` says (KubeVirt sets it
/// to false).
pub fn token_volume(settings: &ImdsSettings) -> Option<Volume> {
    let source = |path: String, audience: Option<&String>| VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            path,
            audience: audience.cloned(),
            expiration_seconds: Some(settings.token_expiration_seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut sources = Vec::new();
    if settings.default_token {
        sources.push(source(contract::TOKEN_FILE_NAME.into(), None));
    }
    for (index, audience) in settings.audiences.iter().enumerate() {
        sources.push(source(contract::audience_file_name(index), Some(audience)));
    }
    has_tokens(settings).then(|| Volume {
        name: contract::TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource { sources: Some(sources), ..Default::default() }),
        ..Default::default()
    })
}
