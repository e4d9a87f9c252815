//! AWS IRSA without hand-made configuration: at admission, the webhook reads
//! the pod's ServiceAccount and, if it names an IAM role the EKS way, tells
//! the sidecar (which serves it at `GET /v1/aws`). The sidecar itself never
//! calls the API. Any failure here admits the pod without the hint.

use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, Client};

use super::sidecar_spec::AwsHint;
use crate::contract;

pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
pub const AUDIENCE_ANNOTATION: &str = "eks.amazonaws.com/audience";

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading ServiceAccount {namespace}/{name}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading ServiceAccount {namespace}/{name} took longer than {timeout:?}")]
    Timeout { namespace: String, name: String, timeout: Duration },
    #[error("ServiceAccount {namespace}/{name}: {reason}")]
    Invalid { namespace: String, name: String, reason: String },
}

/// The IRSA role a ServiceAccount names, if any.
pub fn hint_from(service_account: &ServiceAccount) -> Result<Option<AwsHint>, String> {
    let Some(annotations) = &service_account.metadata.annotations else {
        return Ok(None);
    };
    let Some(role_arn) = annotations.get(ROLE_ARN_ANNOTATION).map(|r| r.trim()).filter(|r| !r.is_empty())
    else {
        return Ok(None);
    };
    if !role_arn.starts_with("arn:") || role_arn.chars().any(char::is_control) {
        return Err(format!("annotation {ROLE_ARN_ANNOTATION} is not an ARN: {role_arn:?}"));
    }
    let audience =
        annotations.get(AUDIENCE_ANNOTATION).map(|a| a.trim()).unwrap_or(contract::DEFAULT_AWS_AUDIENCE);
    contract::check_audience(audience).map_err(|e| format!("annotation {AUDIENCE_ANNOTATION}: {e}"))?;
    Ok(Some(AwsHint { role_arn: role_arn.to_owned(), audience: audience.to_owned() }))
}

/// Reads ServiceAccounts with the webhook's own (get-only) permissions.
#[derive(Clone)]
pub struct ServiceAccounts {
    client: Client,
    timeout: Duration,
}

impl ServiceAccounts {
    /// A client from the in-cluster configuration (or KUBECONFIG).
    pub async fn connect(timeout: Duration) -> Result<Self, kube::Error> {
        let mut config = kube::Config::infer().await.map_err(kube::Error::InferConfig)?;
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        Ok(Self { client: Client::try_from(config)?, timeout })
    }

    pub async fn aws_hint(&self, namespace: &str, name: &str) -> Result<Option<AwsHint>, LookupError> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        let (ns, n) = (namespace.to_owned(), name.to_owned());
        let service_account = match tokio::time::timeout(self.timeout, api.get(name)).await {
            Err(_) => return Err(LookupError::Timeout { namespace: ns, name: n, timeout: self.timeout }),
            Ok(Err(source)) => return Err(LookupError::Api { namespace: ns, name: n, source }),
            Ok(Ok(sa)) => sa,
        };
        hint_from(&service_account).map_err(|reason| LookupError::Invalid { namespace: ns, name: n, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sa(annotations: &[(&str, &str)]) -> ServiceAccount {
        let mut sa = ServiceAccount::default();
        if !annotations.is_empty() {
            sa.metadata.annotations = Some(
                annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            );
        }
        sa
    }

    #[test]
    fn role_and_audience_come_from_the_eks_annotations() {
        assert_eq!(hint_from(&sa(&[])), Ok(None));
        assert_eq!(hint_from(&sa(&[("other", "x")])), Ok(None));
        assert_eq!(
            hint_from(&sa(&[(ROLE_ARN_ANNOTATION, "arn:aws:iam::111122223333:role/vm")])),
            Ok(Some(AwsHint {
                role_arn: "arn:aws:iam::111122223333:role/vm".into(),
                audience: "sts.amazonaws.com".into()
            }))
        );
        assert_eq!(
            hint_from(&sa(&[
                (ROLE_ARN_ANNOTATION, "arn:aws:iam::1:role/r"),
                (AUDIENCE_ANNOTATION, "my-aud")
            ]))
            .unwrap()
            .unwrap()
            .audience,
            "my-aud"
        );
        assert!(hint_from(&sa(&[(ROLE_ARN_ANNOTATION, "not-an-arn")])).is_err());
        assert!(hint_from(&sa(&[(ROLE_ARN_ANNOTATION, "arn:x"), (AUDIENCE_ANNOTATION, "a,b")])).is_err());
    }
}
