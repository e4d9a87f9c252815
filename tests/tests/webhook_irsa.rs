//! The webhook's ServiceAccount read for AWS IRSA, against a local HTTPS
//! endpoint that answers as the API server does: the hint is injected when
//! the account names a role, and the pod is admitted in every case.

use std::time::{Duration, Instant};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use imds_tests::{
    fake_apiserver::FakeApiServer,
    webhook::{POD, Webhook, admission_review, generate_certs, generate_certs_for},
};
use serde_json::{Value, json};

const FIXTURE: &str = include_str!("../fixtures/virt-launcher-pod-openshift.json");

fn review(service_account: &str, enabled: bool) -> Vec<u8> {
    let mut pod: Value = serde_json::from_str(FIXTURE).unwrap();
    pod["spec"]["serviceAccountName"] = json!(service_account);
    if enabled {
        pod["metadata"]["annotations"]["imds.kubevirt.io/enabled"] = json!("true");
    }
    admission_review(&POD, pod, "vm-team", "admission.k8s.io/v1")
}

/// The injected sidecar's environment, name → value.
fn sidecar_env(answer: &Value) -> Vec<(String, String)> {
    let patch = STANDARD.decode(answer["response"]["patch"].as_str().expect("a patch")).unwrap();
    let patch: Vec<Value> = serde_json::from_slice(&patch).unwrap();
    let container = patch.iter().find(|op| op["path"] == "/spec/initContainers").expect("sidecar added");
    container["value"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), e["value"].as_str()?.to_owned())))
        .collect()
}

#[test]
fn irsa_hints_come_from_the_service_account_and_never_block_admission() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook_tls, api_tls) = (dir.path().join("webhook"), dir.path().join("api"));
    generate_certs(&webhook_tls).unwrap();
    generate_certs_for(&api_tls, "kubernetes", "default").unwrap();
    let api = FakeApiServer::start(&api_tls).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig(&api_tls.join("ca.crt"), "kubernetes.default.svc")).unwrap();
    let ca = webhook_tls.join("ca.crt");
    let webhook = Webhook::start_with_env(
        &webhook_tls,
        &ca,
        &["--api-timeout", "1s"],
        &[("KUBECONFIG", kubeconfig.as_path()), ("HOME", dir.path())],
    )
    .unwrap();
    assert!(webhook.log().contains("aws_irsa=true"), "{}", webhook.log());

    let admit = |service_account: &str| -> (Value, Duration) {
        let started = Instant::now();
        let (status, body) = webhook.post("/mutate", &review(service_account, true), &ca).unwrap();
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{service_account}: {body}");
        (answer, started.elapsed())
    };

    let (answer, _) = admit("irsa");
    let env = sidecar_env(&answer);
    assert!(
        env.contains(&("IMDS_AWS_ROLE_ARN".into(), "arn:aws:iam::111122223333:role/vm-reader".into())),
        "{env:?}"
    );
    assert!(env.contains(&("IMDS_AWS_AUDIENCE".into(), "sts.amazonaws.com".into())));
    assert!(env.contains(&("IMDS_TOKEN_AUDIENCES".into(), "sts.amazonaws.com".into())));

    let (answer, _) = admit("irsa-custom");
    let env = sidecar_env(&answer);
    assert!(env.contains(&("IMDS_AWS_AUDIENCE".into(), "my-sts".into())), "{env:?}");

    for (service_account, reason) in
        [("plain", None), ("forbidden", Some("403")), ("missing", Some("not found"))]
    {
        let (answer, _) = admit(service_account);
        let env = sidecar_env(&answer);
        assert!(!env.iter().any(|(k, _)| k.starts_with("IMDS_AWS")), "{service_account}: {env:?}");
        if let Some(reason) = reason {
            let log = webhook.log();
            assert!(log.contains("admitting without the AWS role hint") && log.contains(reason), "{log}");
        }
    }

    // A hang past the timeout: admitted, without the hint, promptly.
    let (answer, took) = admit("slow");
    assert!(!sidecar_env(&answer).iter().any(|(k, _)| k.starts_with("IMDS_AWS")));
    assert!(took < Duration::from_secs(4), "the slow API held the admission for {took:?}");

    // Every lookup reached the API with the webhook's credentials, and pods
    // that do not ask for the IMDS cause none.
    assert_eq!(api.reads_of("vm-team", "irsa"), 1);
    let (status, _) = webhook.post("/mutate", &review("plain", false), &ca).unwrap();
    assert_eq!(status, 200);
    assert_eq!(api.reads_of("vm-team", "plain"), 1);
}
