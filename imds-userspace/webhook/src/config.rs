//! The webhook's command line (every flag with an environment variable).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::{
    sidecar_resources::{self, Burstable, Guaranteed, SidecarResources},
    sidecar_spec::{InjectionMode, SidecarTemplate},
    tls::CertificateFiles,
};

/// Inject the IMDS sidecar into virt-launcher pods of VMs that ask for it.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Address of the HTTPS server.
    #[arg(long, env = "IMDS_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// PEM certificate chain (e.g. a mounted kubernetes.io/tls Secret).
    #[arg(long, env = "IMDS_WEBHOOK_TLS_CERT_FILE", default_value = "/etc/kubevirt-imds/tls/tls.crt")]
    pub tls_cert_file: PathBuf,

    /// PEM private key.
    #[arg(long, env = "IMDS_WEBHOOK_TLS_KEY_FILE", default_value = "/etc/kubevirt-imds/tls/tls.key")]
    pub tls_key_file: PathBuf,

    /// How often to look for a renewed certificate.
    #[arg(long, env = "IMDS_WEBHOOK_CERT_RELOAD_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub cert_reload_interval: Duration,

    /// Image of the injected sidecar (normally the webhook's own image).
    #[arg(long, env = "IMDS_SIDECAR_IMAGE")]
    pub sidecar_image: String,

    #[arg(long, env = "IMDS_SIDECAR_IMAGE_PULL_POLICY", value_enum, default_value_t = PullPolicy::IfNotPresent)]
    pub sidecar_image_pull_policy: PullPolicy,

    /// CPU request of the sidecar in Burstable pods (KubeVirt's default; one
    /// sidecar runs per VM).
    #[arg(long, env = "IMDS_SIDECAR_CPU_REQUEST", default_value = sidecar_resources::DEFAULT_CPU_REQUEST, value_parser = quantity)]
    pub sidecar_cpu_request: String,

    /// Memory request of the sidecar in Burstable pods.
    #[arg(long, env = "IMDS_SIDECAR_MEMORY_REQUEST", default_value = sidecar_resources::DEFAULT_MEMORY_REQUEST, value_parser = quantity)]
    pub sidecar_memory_request: String,

    /// Memory limit of the sidecar in Burstable pods (a memory limit alone
    /// cannot change a Burstable pod's class).
    #[arg(long, env = "IMDS_SIDECAR_MEMORY_LIMIT", default_value = sidecar_resources::DEFAULT_MEMORY_LIMIT, value_parser = quantity)]
    pub sidecar_memory_limit: String,

    /// CPU request and limit of the sidecar in Guaranteed pods (dedicated
    /// CPUs), where requests must equal limits or the pod loses its class.
    #[arg(long, env = "IMDS_SIDECAR_GUARANTEED_CPU", default_value = sidecar_resources::DEFAULT_GUARANTEED_CPU, value_parser = quantity)]
    pub sidecar_guaranteed_cpu: String,

    /// Memory request and limit of the sidecar in Guaranteed pods.
    #[arg(long, env = "IMDS_SIDECAR_GUARANTEED_MEMORY", default_value = sidecar_resources::DEFAULT_GUARANTEED_MEMORY, value_parser = quantity)]
    pub sidecar_guaranteed_memory: String,

    /// Read each injected pod's ServiceAccount for an AWS IRSA role
    /// (`eks.amazonaws.com/role-arn`); needs `get serviceaccounts`.
    #[arg(long, env = "IMDS_WEBHOOK_AWS_IRSA", default_value_t = true, action = clap::ArgAction::Set)]
    pub aws_irsa: bool,

    /// How long a ServiceAccount read may take before the pod is admitted without it.
    #[arg(long, env = "IMDS_WEBHOOK_API_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub api_timeout: Duration,

    /// The region the VMs' cloud metadata names (EC2 `placement/region`, the
    /// identity document); default: the sidecar's (`kubevirt`). Set it (and
    /// the zone) where AWS SDKs in the guests should find a real region.
    #[arg(long, env = "IMDS_WEBHOOK_METADATA_REGION", value_parser = placement_name)]
    pub metadata_region: Option<String>,

    /// The availability zone the VMs' cloud metadata names (EC2
    /// `placement/availability-zone`, OpenStack `availability_zone`);
    /// botocore takes the region as the zone without its last character, so
    /// pair it with the region (e.g. `us-east-1` / `us-east-1a`).
    #[arg(long, env = "IMDS_WEBHOOK_METADATA_AVAILABILITY_ZONE", value_parser = placement_name)]
    pub metadata_availability_zone: Option<String>,

    /// `native-sidecar` (Kubernetes >= 1.29) or `container` for older clusters.
    #[arg(long, env = "IMDS_INJECTION_MODE", value_enum, default_value_t = InjectionMode::NativeSidecar)]
    pub injection_mode: InjectionMode,

    /// The user that creates virt-launcher pods: KubeVirt's controller
    /// (`system:serviceaccount:openshift-cnv:kubevirt-controller` on
    /// OpenShift Virtualization). Pods anyone else creates are refused the
    /// injection. Repeat, or comma-separate.
    #[arg(long = "kubevirt-controller-user", env = "IMDS_WEBHOOK_KUBEVIRT_CONTROLLER_USERS", value_delimiter = ',', default_value = crate::policy::DEFAULT_CONTROLLER_USER, value_parser = non_empty)]
    pub kubevirt_controller_users: Vec<String>,

    /// Token audiences VMs may ask for (`imds.kubevirt.io/token-audiences`,
    /// and the IRSA audience): globs with `*` and `?`, e.g.
    /// `sts.amazonaws.com,vault,spiffe://*.example.com`. `*` allows any.
    /// Repeat, or comma-separate.
    #[arg(long = "allowed-audience", env = "IMDS_WEBHOOK_ALLOWED_AUDIENCES", value_delimiter = ',', default_value = "*", value_parser = non_empty)]
    pub allowed_audiences: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl WebhookArgs {
    /// What to inject, or why these flags cannot work: a memory request
    /// above its limit would make the API server refuse every pod injected.
    pub fn template(&self) -> anyhow::Result<SidecarTemplate> {
        let pull = match self.sidecar_image_pull_policy {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        };
        let (request, limit) = (&self.sidecar_memory_request, &self.sidecar_memory_limit);
        if crate::quantity::parse(request) > crate::quantity::parse(limit) {
            anyhow::bail!(
                "--sidecar-memory-request {request} is above --sidecar-memory-limit {limit}: the API server \
                 would refuse every pod the webhook injects"
            );
        }
        Ok(SidecarTemplate {
            image: self.sidecar_image.clone(),
            image_pull_policy: pull.into(),
            resources: SidecarResources::new(
                Burstable {
                    cpu_request: &self.sidecar_cpu_request,
                    memory_request: request,
                    memory_limit: limit,
                },
                Guaranteed { cpu: &self.sidecar_guaranteed_cpu, memory: &self.sidecar_guaranteed_memory },
            ),
            mode: self.injection_mode,
            region: self.metadata_region.clone(),
            availability_zone: self.metadata_availability_zone.clone(),
        })
    }

    pub fn policy(&self) -> crate::policy::Policy {
        crate::policy::Policy::new(self.kubevirt_controller_users.clone(), self.allowed_audiences.clone())
    }

    pub fn certificate_files(&self) -> CertificateFiles {
        CertificateFiles { cert: self.tls_cert_file.clone(), key: self.tls_key_file.clone() }
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() { Err("must not be empty".into()) } else { Ok(s.to_owned()) }
}

fn placement_name(s: &str) -> Result<String, String> {
    crate::contract::check_placement_name(s).map(|()| s.to_owned()).map_err(str::to_owned)
}

/// A positive Kubernetes resource quantity as people write them: `5m`,
/// `0.1`, `16Mi`, `1G` (Kubernetes' own grammar, from a digit on).
fn quantity(s: &str) -> Result<String, String> {
    let digit = |c: char| c.is_ascii_digit();
    let written_plainly =
        s.starts_with(digit) && s.match_indices('.').all(|(i, _)| s[i + 1..].starts_with(digit));
    match crate::quantity::parse(s) {
        Some(value) if written_plainly && value > 0 => Ok(s.to_owned()),
        _ => Err("not a positive Kubernetes quantity (e.g. `5m`, `16Mi`, `0.5`)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["5m", "0.5", "16Mi", "1G", "100", "2Gi"] {
            assert_eq!(quantity(ok), Ok(ok.to_owned()));
        }
        for bad in ["", "Mi", "5 m", "5mb", "-1", ".5", "1..2", "1.2.3Mi", "0", "0Mi", "5.", "1e3x"] {
            assert!(quantity(bad).is_err(), "{bad:?}");
        }
    }

    fn args(extra: &[&str]) -> WebhookArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            webhook: WebhookArgs,
        }
        let argv = ["webhook", "--sidecar-image", "registry.example/kubevirt-imds:0.1.0"].iter().chain(extra);
        <Cli as clap::Parser>::try_parse_from(argv).unwrap().webhook
    }

    #[test]
    fn the_defaults_size_the_sidecar_per_qos_class() {
        use crate::qos::QosClass;
        let template = args(&[]).template().unwrap();
        let resources = |class| serde_json::to_value(template.resources.for_class(class)).unwrap();
        assert_eq!(
            resources(QosClass::Burstable),
            serde_json::json!({"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}})
        );
        assert_eq!(
            resources(QosClass::Guaranteed),
            serde_json::json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "10m", "memory": "32Mi"}})
        );
        assert_eq!(resources(QosClass::BestEffort), serde_json::Value::Null);
    }

    #[test]
    fn a_memory_request_above_its_limit_is_refused_at_start() {
        let error = args(&["--sidecar-memory-request", "128Mi"]).template().unwrap_err().to_string();
        assert!(error.contains("--sidecar-memory-limit"), "{error}");
        // Equal is fine, whatever the spelling.
        assert!(args(&["--sidecar-memory-request", "65536Ki"]).template().is_ok());
    }
}
