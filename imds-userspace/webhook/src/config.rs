//! The webhook's command line (every flag with an environment variable).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};

use super::{
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

    /// CPU request of the sidecar (one runs per VM).
    #[arg(long, env = "IMDS_SIDECAR_CPU_REQUEST", default_value = "5m", value_parser = quantity)]
    pub sidecar_cpu_request: String,

    #[arg(long, env = "IMDS_SIDECAR_MEMORY_REQUEST", default_value = "16Mi", value_parser = quantity)]
    pub sidecar_memory_request: String,

    #[arg(long, env = "IMDS_SIDECAR_MEMORY_LIMIT", default_value = "64Mi", value_parser = quantity)]
    pub sidecar_memory_limit: String,

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl WebhookArgs {
    pub fn template(&self) -> SidecarTemplate {
        let pull = match self.sidecar_image_pull_policy {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        };
        SidecarTemplate {
            image: self.sidecar_image.clone(),
            image_pull_policy: pull.into(),
            resources: SidecarTemplate::resources(
                &self.sidecar_cpu_request,
                &self.sidecar_memory_request,
                &self.sidecar_memory_limit,
            ),
            mode: self.injection_mode,
            region: self.metadata_region.clone(),
            availability_zone: self.metadata_availability_zone.clone(),
        }
    }

    pub fn certificate_files(&self) -> CertificateFiles {
        CertificateFiles { cert: self.tls_cert_file.clone(), key: self.tls_key_file.clone() }
    }
}

fn placement_name(s: &str) -> Result<String, String> {
    crate::contract::check_placement_name(s).map(|()| s.to_owned()).map_err(str::to_owned)
}

/// A Kubernetes resource quantity as people write them: `5m`, `0.1`, `16Mi`, `1G`.
fn quantity(s: &str) -> Result<String, String> {
    const SUFFIXES: [&str; 14] = ["m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", ""];
    let number_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if number_ok && SUFFIXES.contains(&suffix) {
        Ok(s.to_owned())
    } else {
        Err("not a Kubernetes quantity (e.g. `5m`, `16Mi`, `0.5`)".into())
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
        for bad in ["", "Mi", "5 m", "5mb", "-1", ".5", "1..2", "1.2.3Mi"] {
            assert!(quantity(bad).is_err(), "{bad:?}");
        }
    }
}
