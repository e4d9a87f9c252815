//! What the cluster allows, whatever a VM's owner asks for: who may create
//! the pods the sidecar is injected into, and which token audiences a VM
//! may be given. Set by flags on the webhook (cluster administrators);
//! nothing on a VM can widen it.

use wildmatch::WildMatch;

/// KubeVirt's controller, which creates every virt-launcher pod
/// (`kubevirt-controller` in the namespace KubeVirt is installed in:
/// `kubevirt` upstream, `openshift-cnv` with OpenShift Virtualization).
pub const DEFAULT_CONTROLLER_USER: &str = "system:serviceaccount:kubevirt:kubevirt-controller";

#[derive(Debug, Clone)]
pub struct Policy {
    controller_users: Vec<String>,
    allowed_audiences: Vec<(String, WildMatch)>,
}

impl Policy {
    /// `controller_users`: the users whose virt-launcher pods are injected.
    /// `allowed_audiences`: globs (`*`, `?`) an extra token audience must
    /// match; `*` allows any.
    pub fn new(controller_users: Vec<String>, allowed_audiences: Vec<String>) -> Self {
        let allowed_audiences =
            allowed_audiences.into_iter().map(|glob| (glob.clone(), WildMatch::new(&glob))).collect();
        Self { controller_users, allowed_audiences }
    }

    /// Only KubeVirt's controller creates virt-launcher pods: a pod anyone
    /// else labels `kubevirt.io: virt-launcher` gets no ServiceAccount
    /// tokens from us.
    pub fn check_creator(&self, username: &str) -> Result<(), String> {
        if self.controller_users.iter().any(|u| u == username) {
            return Ok(());
        }
        Err(format!(
            "only KubeVirt's controller ({}) creates the virt-launcher pods kubevirt-imds is injected into; \
             this one was created by {username:?} (the webhook's --kubevirt-controller-user names the \
             controller)",
            self.controller_users.join(", ")
        ))
    }

    /// Every audience must match one of the cluster's globs.
    pub fn check_audiences<'a>(&self, audiences: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        for audience in audiences {
            if !self.allowed_audiences.iter().any(|(_, glob)| glob.matches(audience)) {
                let allowed: Vec<&str> = self.allowed_audiences.iter().map(|(g, _)| g.as_str()).collect();
                return Err(format!(
                    "token audience {audience:?} is not allowed in this cluster (allowed: {}; the webhook's \
                     --allowed-audience sets them)",
                    if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") }
                ));
            }
        }
        Ok(())
    }
}

impl Default for Policy {
    /// KubeVirt's upstream controller; any audience.
    fn default() -> Self {
        Self::new(vec![DEFAULT_CONTROLLER_USER.into()], vec!["*".into()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_controller_creates_injected_pods() {
        let p = Policy::default();
        assert_eq!(p.check_creator(DEFAULT_CONTROLLER_USER), Ok(()));
        for other in [
            "system:serviceaccount:vm-team:default",
            "alice",
            "system:serviceaccount:kubevirt:kubevirt-controller-x",
            "",
        ] {
            let e = p.check_creator(other).unwrap_err();
            assert!(e.contains(&format!("{other:?}")) && e.contains(DEFAULT_CONTROLLER_USER), "{e}");
        }
        let openshift =
            Policy::new(vec!["system:serviceaccount:openshift-cnv:kubevirt-controller".into()], vec![]);
        assert!(openshift.check_creator("system:serviceaccount:openshift-cnv:kubevirt-controller").is_ok());
        assert!(openshift.check_creator(DEFAULT_CONTROLLER_USER).is_err());
    }

    #[test]
    fn audiences_must_match_a_glob_and_the_refusal_names_the_audience() {
        let p = Policy::new(
            vec![],
            vec!["sts.amazonaws.com".into(), "vault".into(), "spiffe://*.example.com".into()],
        );
        let ok = ["sts.amazonaws.com", "vault", "spiffe://prod.example.com"].map(String::from);
        assert_eq!(p.check_audiences(&ok), Ok(()));
        for bad in ["sts.amazonaws.com.evil", "Vault", "spiffe://example.org", "api"] {
            let e = p.check_audiences(&[bad.to_owned()]).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")) && e.contains("vault"), "{e}");
        }
        assert!(Policy::default().check_audiences(&["anything".to_owned()]).is_ok());
        let none = Policy::new(vec![], vec![]);
        assert!(none.check_audiences(&["vault".to_owned()]).unwrap_err().contains("allowed: none"));
        assert_eq!(none.check_audiences(&[]), Ok(()));
    }
}
