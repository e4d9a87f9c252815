//! The real `kubevirt-imds-webhook` over real TLS, with certificates from
//! `cargo xtask generate-certs`, fed the virt-launcher pods of
//! `tests/fixtures/` (OpenShift's, captured; KubeVirt v1.9's, derived).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use imds_tests::{
    fixtures::{LAUNCHER_PODS, OPENSHIFT, OPENSHIFT_CAT8KV, V1_9_DEDICATED_CPU},
    memory_cap::MemoryCap,
    netns::require_root,
    tokens::ProjectedVolume,
    webhook::{
        POD, REQUEST_UID, Subject, VMI, Webhook, admission_review, generate_certs, generate_certs_with,
        patched,
    },
};
use imds_webhook::{
    annotations::DATASOURCE_HINT_APPLIED,
    contract,
    datasource_hint::{OPENSTACK_ASSET_TAG, SEED_SERIAL},
    firmware_uuid::ANNOTATION as FIRMWARE_UUID_ANNOTATION,
};
use serde_json::{Value, json};

const VMI_FIXTURES: [&str; 2] = [
    include_str!("../fixtures/vmi/vmi-from-vm-v1.9.json"),
    include_str!("../fixtures/vmi/vmi-masquerade-direct.json"),
];

fn review(object: Value, api_version: &str) -> Vec<u8> {
    admission_review(&POD, object, "vm-team", api_version)
}

/// The patched pod against the Kubernetes Pod schema (`kubernetes-validate
/// --strict`, which `cargo xtask setup` installs and `cargo xtask test`
/// points to).
fn validate_pod(pod: &Value) {
    let validator = std::env::var_os("IMDS_KUBERNETES_VALIDATE")
        .expect("IMDS_KUBERNETES_VALIDATE is not set: run the tests with `cargo xtask test`");
    // A pod reaches the webhook before the API server generates its name
    // from generateName; the validator wants one to report on.
    let mut pod = pod.clone();
    if pod["metadata"]["name"].is_null() {
        let name = format!("{}x7k2q", pod["metadata"]["generateName"].as_str().unwrap());
        pod["metadata"]["name"] = json!(name);
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&pod).unwrap()).unwrap();
    let out = std::process::Command::new(validator)
        .args(["--strict", "--kubernetes-version", "1.37.0"])
        .arg(file.path())
        .output()
        .expect("running kubernetes-validate");
    assert!(
        out.status.success(),
        "the patched pod does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Certificates served from a directory laid out like a mounted Secret.
struct Tls {
    _dir: tempfile::TempDir,
    _mounted: ProjectedVolume,
    first: std::path::PathBuf,
    mount_dir: std::path::PathBuf,
}

fn tls() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    generate_certs(&first).unwrap();
    let mount_dir = dir.path().join("secret");
    let mounted = ProjectedVolume::new(&mount_dir).unwrap();
    publish(&mounted, &first);
    Tls { first, mount_dir, _mounted: mounted, _dir: dir }
}

fn publish(volume: &ProjectedVolume, from: &std::path::Path) {
    let cert = std::fs::read(from.join("tls.crt")).unwrap();
    let key = std::fs::read(from.join("tls.key")).unwrap();
    volume.publish_files(&[("tls.crt", &cert), ("tls.key", &key)]).unwrap();
}

#[test]
fn admission_round_trip_over_verified_tls() {
    let tls = tls();
    let webhook = Webhook::start(&tls.mount_dir, &tls.first.join("ca.crt"), &[]).unwrap();
    let ca = tls.first.join("ca.crt");
    for fixture in &LAUNCHER_PODS {
        let pod = fixture.enabled();
        let (status, body) =
            webhook.post("/mutate", &review(pod.clone(), "admission.k8s.io/v1"), &ca).unwrap();
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = &answer["response"];
        assert_eq!(response["uid"], REQUEST_UID);
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        let patched = patched(&pod, &answer).unwrap();
        let sidecar = patched["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "kubevirt-imds")
            .expect("sidecar injected")
            .clone();
        assert_eq!(sidecar["image"], "registry.example/kubevirt-imds:test");
        assert_eq!(sidecar["restartPolicy"], "Always");
        assert_eq!(sidecar["command"], json!([contract::SIDECAR_BINARY_PATH, "run"]), "{}", fixture.file);
        assert!(sidecar.get("args").is_none());
        assert_eq!(
            sidecar["securityContext"],
            json!({
                "runAsUser": 107, "runAsGroup": 107, "runAsNonRoot": true,
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
            })
        );
        assert_eq!(
            sidecar["startupProbe"],
            json!({"exec": {"command": [contract::SIDECAR_BINARY_PATH, "probe"]},
                   "periodSeconds": 1, "timeoutSeconds": 3, "failureThreshold": 300})
        );
        assert_eq!(
            sidecar["volumeMounts"][0],
            json!({"name": contract::RUN_VOLUME, "mountPath": contract::RUN_DIR})
        );
        // The flags' defaults, per QoS class (a Guaranteed pod stays one).
        let resources = if fixture.file == V1_9_DEDICATED_CPU.file {
            json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "10m", "memory": "32Mi"}})
        } else {
            json!({"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}})
        };
        assert_eq!(sidecar["resources"], resources, "{}", fixture.file);
        let volumes = patched["spec"]["volumes"].as_array().unwrap();
        let original_volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(&volumes[..original_volumes.len()], &original_volumes[..]);
        assert_eq!(
            volumes[original_volumes.len()],
            json!({"name": contract::RUN_VOLUME, "emptyDir": {"sizeLimit": "1Mi"}})
        );
        assert_eq!(patched["spec"]["containers"], pod["spec"]["containers"]);
        validate_pod(&patched);

        // Applied a second time: allowed, nothing to change.
        let (_, body) = webhook.post("/mutate", &review(patched, "admission.k8s.io/v1"), &ca).unwrap();
        let again: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(again["response"]["allowed"], true);
        assert!(again["response"].get("patch").is_none());
    }
    // A malformed annotation is refused with a message naming it.
    let mut pod = OPENSHIFT.enabled();
    pod["metadata"]["annotations"]["imds.kubevirt.io/token-expiration-seconds"] = json!("soon");
    let (status, body) = webhook.post("/mutate", &review(pod, "admission.k8s.io/v1"), &ca).unwrap();
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("imds.kubevirt.io/token-expiration-seconds"), "{message}");
    let log = webhook.log();
    assert!(
        log.contains("decision=\"injected\"") && log.contains("decision=\"refused\""),
        "decisions not logged:\n{log}"
    );
}

/// The VMI with the settings a user puts on the VM's template.
fn vmi_asking(fixture: &str, annotations: &[(&str, &str)]) -> Value {
    let mut vmi: Value = serde_json::from_str(fixture).unwrap();
    vmi["metadata"]["annotations"]["imds.kubevirt.io/enabled"] = json!("true");
    for (k, v) in annotations {
        vmi["metadata"]["annotations"][*k] = json!(v);
    }
    vmi
}

#[test]
fn vmis_get_the_datasource_hint_over_verified_tls() {
    let tls = tls();
    let ca = tls.first.join("ca.crt");
    let webhook = Webhook::start(&tls.mount_dir, &ca, &[]).unwrap();
    let post = |vmi: &Value| -> Value {
        let (status, body) = webhook
            .post("/mutate-vmi", &admission_review(&VMI, vmi.clone(), "vm-team", "admission.k8s.io/v1"), &ca)
            .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    for fixture in VMI_FIXTURES {
        let original: Value = serde_json::from_str(fixture).unwrap();
        let original_serial = original["spec"]["domain"]["firmware"]["serial"].as_str().map(str::to_owned);
        for (flavors, check) in [("nocloud", "serial"), ("openstack,ec2", "asset"), ("ec2", "uuid")] {
            let vmi = vmi_asking(fixture, &[("imds.kubevirt.io/metadata-flavors", flavors)]);
            let answer = post(&vmi);
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            let hinted = patched(&vmi, &answer).unwrap();
            let domain = &hinted["spec"]["domain"];
            match check {
                // KubeVirt's own serial (when the VM has one) stays first.
                "serial" => assert_eq!(
                    domain["firmware"]["serial"].as_str().unwrap(),
                    match &original_serial {
                        Some(s) => format!("{s} {SEED_SERIAL}"),
                        None => SEED_SERIAL.to_owned(),
                    }
                ),
                "asset" => assert_eq!(domain["chassis"]["asset"], OPENSTACK_ASSET_TAG),
                _ => {
                    let uuid = domain["firmware"]["uuid"].as_str().unwrap();
                    assert!(uuid.starts_with("ec2"), "{uuid}");
                    assert_eq!(domain["firmware"]["serial"], json!(uuid));
                }
            }
            // Everything but the SMBIOS fields and our annotation is as it was.
            let mut rest = hinted.clone();
            for key in ["firmware", "chassis"] {
                rest["spec"]["domain"].as_object_mut().unwrap().remove(key);
            }
            let mut expected = vmi.clone();
            for key in ["firmware", "chassis"] {
                expected["spec"]["domain"].as_object_mut().unwrap().remove(key);
            }
            expected["metadata"]["annotations"][DATASOURCE_HINT_APPLIED] =
                hinted["metadata"]["annotations"][DATASOURCE_HINT_APPLIED].clone();
            // The firmware UUID the guest gets is recorded for the sidecar's
            // instance-id (when the VMI has one).
            let recorded = &hinted["metadata"]["annotations"][FIRMWARE_UUID_ANNOTATION];
            assert_eq!(recorded, &domain["firmware"]["uuid"], "{flavors}");
            if !recorded.is_null() {
                expected["metadata"]["annotations"][FIRMWARE_UUID_ANNOTATION] = recorded.clone();
            }
            assert_eq!(rest, expected, "{flavors}");
            assert!(hinted["metadata"]["annotations"][DATASOURCE_HINT_APPLIED].as_str().unwrap().len() > 10);
            // Reinvoked: nothing more changes.
            assert_eq!(patched(&hinted, &post(&hinted)).unwrap()["spec"], hinted["spec"]);
        }
        // Not opted in: allowed untouched.
        let answer = post(&original);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"].get("patch").is_none());
    }
    // A malformed setting is refused where the VM's author sees it (the VM's status).
    let answer = post(&vmi_asking(
        VMI_FIXTURES[0],
        &[("imds.kubevirt.io/metadata-flavors", "nocloud"), ("imds.kubevirt.io/datasource-hint", "ec2")],
    ));
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("imds.kubevirt.io/datasource-hint"), "{message}");
    let log = webhook.log();
    assert!(log.contains("decision=\"hinted\"") && log.contains("VirtualMachineInstance"), "{log}");
}

/// The `caBundle` the self-signed overlay would apply: decoded from the
/// generated `cabundle-patch.yaml`, as the API server would hold it.
fn deployed_bundle(generated: &std::path::Path) -> Vec<u8> {
    use base64::Engine as _;
    let patch = std::fs::read_to_string(generated.join("cabundle-patch.yaml")).unwrap();
    let encoded: Vec<&str> = patch.lines().filter_map(|l| l.trim().strip_prefix("caBundle: ")).collect();
    assert_eq!(encoded.len(), 2, "one caBundle per webhook: {patch}");
    assert_eq!(encoded[0], encoded[1], "both webhooks trust the same CA");
    base64::engine::general_purpose::STANDARD.decode(encoded[0]).unwrap()
}

/// Renewals as a cluster without cert-manager sees them: `generate-certs`
/// run again and applied. The client (the API server) trusts only the
/// deployed `caBundle`; the webhook reloads at the Deployment's interval
/// (its default). Two serving-certificate renewals keep the bundle, so no
/// request fails while the pods still serve the old certificate; a CA
/// rotation applies a bundle holding both CAs before the new certificate
/// reaches the pod. Zero failed reviews throughout, and a half-written
/// Secret is ignored.
#[test]
fn renewals_and_a_ca_rotation_never_fail_a_review_that_trusts_only_the_deployed_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("generated");
    generate_certs(&generated).unwrap();
    let trusted = dir.path().join("api-server-ca-bundle.crt");
    let apply_bundle = |bundle: &[u8]| {
        let next = dir.path().join("bundle.next");
        std::fs::write(&next, bundle).unwrap();
        std::fs::rename(&next, &trusted).unwrap();
    };
    apply_bundle(&deployed_bundle(&generated));
    let mount_dir = dir.path().join("secret");
    let mounted = ProjectedVolume::new(&mount_dir).unwrap();
    publish(&mounted, &generated);
    let webhook = Webhook::start(&mount_dir, &trusted, &[]).unwrap();
    let reload = Duration::from_secs(10); // the webhook's default, which deploy/ keeps

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed, trusted) = (stop.clone(), ok.clone(), failed.clone(), trusted.clone());
        let webhook_view = WebhookView { port: webhook.port };
        std::thread::spawn(move || {
            let body = review(OPENSHIFT_CAT8KV.enabled(), "admission.k8s.io/v1");
            while !stop.load(Ordering::Relaxed) {
                match webhook_view.post(&body, &trusted) {
                    Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let serving = || std::fs::read(mount_dir.join("tls.crt")).unwrap();
    let wait_until_served = |what: &str| {
        let wanted = serving();
        let deadline = Instant::now() + reload * 2;
        loop {
            let out = std::process::Command::new("openssl")
                .args(["s_client", "-connect", &format!("127.0.0.1:{}", webhook.port), "-showcerts"])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            let shown = String::from_utf8_lossy(&out.stdout);
            let wanted = String::from_utf8_lossy(&wanted);
            let body = wanted.lines().filter(|l| !l.starts_with("-----")).collect::<String>();
            if shown.lines().filter(|l| !l.starts_with("-----")).collect::<String>().contains(&body) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not served within {:?}:\n{}",
                reload * 2,
                webhook.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    std::thread::sleep(Duration::from_secs(1));

    // A half-written Secret (garbage) is ignored: the old certificate stays.
    let good = (
        std::fs::read(generated.join("tls.crt")).unwrap(),
        std::fs::read(generated.join("tls.key")).unwrap(),
    );
    mounted.publish_files(&[("tls.crt", b"not a certificate"), ("tls.key", b"nor a key")]).unwrap();
    std::thread::sleep(reload + Duration::from_secs(1));
    assert!(webhook.log().contains("keeping the current one"), "{}", webhook.log());
    mounted.publish_files(&[("tls.crt", &good.0), ("tls.key", &good.1)]).unwrap();

    for renewal in 1..=2 {
        let before = deployed_bundle(&generated);
        generate_certs(&generated).unwrap();
        assert_eq!(deployed_bundle(&generated), before, "renewal {renewal} changed the caBundle");
        // kubectl apply: the bundle (unchanged) at once, the Secret when
        // the kubelet syncs it.
        apply_bundle(&deployed_bundle(&generated));
        publish(&mounted, &generated);
        wait_until_served(&format!("renewal {renewal}"));
    }

    generate_certs_with(&generated, &["--rotate-ca"]).unwrap();
    let rotated = deployed_bundle(&generated);
    assert_eq!(String::from_utf8_lossy(&rotated).matches("BEGIN CERTIFICATE").count(), 2, "old and new CA");
    apply_bundle(&rotated);
    std::thread::sleep(Duration::from_secs(2));
    publish(&mounted, &generated);
    wait_until_served("the certificate of the new CA");
    std::thread::sleep(Duration::from_secs(1));

    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "reviews failed across the renewals ({} succeeded)",
        ok.load(Ordering::Relaxed)
    );
    assert!(ok.load(Ordering::Relaxed) >= 20, "too few reviews during the renewals");
    assert!(webhook.log().matches("TLS certificate reloaded").count() >= 3, "{}", webhook.log());
}

/// The HTTPS call of the looping client (a Webhook is not shared across threads).
struct WebhookView {
    port: u16,
}

impl WebhookView {
    fn post(&self, body: &[u8], ca: &std::path::Path) -> Option<u16> {
        let file = tempfile::NamedTempFile::new().ok()?;
        std::fs::write(file.path(), body).ok()?;
        let out = std::process::Command::new("curl")
            .args(["-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(ca)
            .args(["--resolve", &format!("{}:{}:127.0.0.1", imds_tests::webhook::SERVICE_DNS, self.port)])
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.path().display()))
            .arg(format!("https://{}:{}/mutate", imds_tests::webhook::SERVICE_DNS, self.port))
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

#[test]
fn hostile_input_gets_a_clear_answer_never_a_crash() {
    let tls = tls();
    let webhook = Webhook::start(&tls.mount_dir, &tls.first.join("ca.crt"), &[]).unwrap();
    let ca = tls.first.join("ca.crt");

    let (status, body) = webhook.post("/mutate", b"this is not json", &ca).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not an AdmissionReview"), "{body}");

    let (status, _) = webhook.post("/mutate", b"", &ca).unwrap();
    assert_eq!(status, 400);

    let (status, body) = webhook
        .post("/mutate", br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, &ca)
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no request"), "{body}");

    let huge = vec![b' '; 5 * 1024 * 1024];
    let (status, _) = webhook.post("/mutate", &huge, &ca).unwrap();
    assert_eq!(status, 413);

    let (status, body) =
        webhook.post("/mutate", &review(OPENSHIFT.enabled(), "admission.k8s.io/v1beta1"), &ca).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("admission.k8s.io/v1"), "{body}");

    // Another kind of object: allowed, untouched.
    let config_map =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}});
    let (status, body) = webhook
        .post(
            "/mutate",
            &admission_review(
                &Subject("", "v1", "ConfigMap", "configmaps"),
                config_map,
                "vm-team",
                "admission.k8s.io/v1",
            ),
            &ca,
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    // Deeply nested JSON: refused, not a stack overflow.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, _) = webhook.post("/mutate", nested.as_bytes(), &ca).unwrap();
    assert_eq!(status, 400);

    let (status, _) = webhook.get("/mutate", &ca).unwrap();
    assert_eq!(status, 405);
    // Still alive and well after all that.
    assert_eq!(webhook.get("/healthz", &ca).unwrap(), (200, "OK".into()));
}

/// The Deployment's memory limit (deploy/base/deployment.yaml).
const WEBHOOK_MEMORY_LIMIT: u64 = 64 * 1024 * 1024;

/// A 4 MiB review of an opted-in virt-launcher pod whose object carries one
/// long array (two million values): built as `serde_json::Value`s and a
/// typed Pod, it took the webhook to 160 MB. Under the Deployment's 64Mi
/// limit it must be refused with a 4xx, several at once, and the webhook
/// must go on injecting; a big but reasonable pod (a 3 MiB annotation) is
/// still served, several at once.
#[test]
fn crafted_bodies_under_the_deployed_memory_limit_are_refused_and_serving_goes_on() {
    require_root();
    let tls = tls();
    let ca = tls.first.join("ca.crt");
    let mut webhook = Webhook::start(&tls.mount_dir, &ca, &[]).unwrap();
    let cap = MemoryCap::new(WEBHOOK_MEMORY_LIMIT).unwrap();
    cap.add(webhook.pid()).unwrap();

    let mut pod = OPENSHIFT.enabled();
    let mut long = String::with_capacity(4 * 1024 * 1024);
    long.push('[');
    for _ in 0..(2 * 1024 * 1024 - 4096) {
        long.push_str("0,");
    }
    long.push_str("0]");
    pod["spec"]["x"] = json!("LONG");
    let crafted = String::from_utf8(review(pod, "admission.k8s.io/v1")).unwrap().replace("\"LONG\"", &long);
    assert!(
        crafted.len() < 4 * 1024 * 1024,
        "{} bytes: over the body limit, not what this tests",
        crafted.len()
    );

    let mut big = OPENSHIFT.enabled();
    big["metadata"]["annotations"]["example.com/big"] = json!("x".repeat(3 * 1024 * 1024));
    let big = review(big, "admission.k8s.io/v1");

    let webhook_ref = &webhook;
    std::thread::scope(|scope| {
        let crafted_answers: Vec<_> =
            (0..4).map(|_| scope.spawn(|| webhook_ref.post("/mutate", crafted.as_bytes(), &ca))).collect();
        let big_answers: Vec<_> =
            (0..3).map(|_| scope.spawn(|| webhook_ref.post("/mutate", &big, &ca))).collect();
        for answer in crafted_answers {
            let (status, body) = answer.join().unwrap().unwrap();
            assert_eq!(status, 413, "{body}");
            assert!(body.contains("more than 50000 JSON values"), "{body}");
        }
        for answer in big_answers {
            let (status, body) = answer.join().unwrap().unwrap();
            assert_eq!(status, 200, "{}", &body[..body.len().min(500)]);
            let answer: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["response"]["allowed"], true);
            assert!(answer["response"]["patch"].is_string(), "the big pod was not injected");
        }
    });
    let (status, body) =
        webhook.post("/mutate", &review(OPENSHIFT.enabled(), "admission.k8s.io/v1"), &ca).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(serde_json::from_str::<Value>(&body).unwrap()["response"]["patch"].is_string());
    assert_eq!(webhook.exited().unwrap(), None, "the webhook died:\n{}", webhook.log());
    assert_eq!(cap.oom_kills().unwrap(), 0);
    eprintln!("peak memory of the webhook's cgroup: {:.1} MiB", cap.peak().unwrap() as f64 / 1048576.0);
}

/// A body trickled in is cut at the webhook's deadline (10 s), not held for
/// as long as the sender likes; others are served meanwhile.
#[test]
fn a_trickled_body_is_cut_at_the_deadline() {
    let tls = tls();
    let ca = tls.first.join("ca.crt");
    let webhook = Webhook::start(&tls.mount_dir, &ca, &[]).unwrap();
    let body = review(OPENSHIFT.enabled(), "admission.k8s.io/v1");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    // At 200 bytes/s the body would take half a minute or more.
    assert!(body.len() > 200 * 30, "{} bytes", body.len());
    let mut slow = webhook.curl_to("/mutate", &ca, Duration::from_secs(120));
    slow.args(["--limit-rate", "200", "-H", "Content-Type: application/json", "--data-binary"])
        .arg(format!("@{}", file.path().display()));
    let started = Instant::now();
    let slow =
        slow.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (status, _) = webhook.post("/mutate", &body, &ca).unwrap();
    assert_eq!(status, 200, "another client is served while one trickles");
    let out = slow.wait_with_output().unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(took < Duration::from_secs(30), "the trickled body was held {took:?}");
    assert!(took >= Duration::from_secs(9), "cut before the deadline ({took:?})");
    // curl reports the 408 if it reads the answer before the connection
    // closes under it; either way the server let go at the deadline.
    let status = stdout.lines().last().unwrap_or_default();
    assert!(status == "408" || !out.status.success(), "status {status}, curl: {:?}", out.status);
    assert!(webhook.log().contains("did not arrive in time"), "{}", webhook.log());
}

/// The cluster's limits, set by flags, over real TLS: a pod from anyone but
/// the named controller and an audience outside the allow-list are refused
/// with messages naming them; the label alone opts in.
#[test]
fn the_cluster_s_limits_hold_over_tls() {
    let tls = tls();
    let ca = tls.first.join("ca.crt");
    let controller = "system:serviceaccount:openshift-cnv:kubevirt-controller";
    let webhook = Webhook::start(
        &tls.mount_dir,
        &ca,
        &["--kubevirt-controller-user", controller, "--allowed-audience", "vault,spiffe://*.example.com"],
    )
    .unwrap();
    let post = |pod: Value, user: &str| -> Value {
        let mut review: Value = serde_json::from_slice(&review(pod, "admission.k8s.io/v1")).unwrap();
        review["request"]["userInfo"]["username"] = json!(user);
        let (status, body) = webhook.post("/mutate", review.to_string().as_bytes(), &ca).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let mut labelled = OPENSHIFT.pod();
    labelled["metadata"]["labels"]["imds.kubevirt.io/enabled"] = json!("true");
    let answer = post(labelled.clone(), controller);
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    assert!(answer["response"]["patch"].is_string(), "the label alone did not opt in");

    let answer = post(labelled.clone(), "system:serviceaccount:kubevirt:kubevirt-controller");
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("system:serviceaccount:kubevirt:kubevirt-controller")
            && message.contains(controller)
    );

    for (audiences, allowed) in
        [("vault,spiffe://prod.example.com", true), ("vault,sts.amazonaws.com", false)]
    {
        let mut pod = labelled.clone();
        pod["metadata"]["annotations"]["imds.kubevirt.io/token-audiences"] = json!(audiences);
        let answer = post(pod, controller);
        assert_eq!(answer["response"]["allowed"], allowed, "{audiences}: {answer}");
        if !allowed {
            let message = answer["response"]["status"]["message"].as_str().unwrap();
            assert!(message.contains("\"sts.amazonaws.com\""), "{message}");
        }
    }
}

/// KubeVirt's own example VirtualMachines (`examples/` at d923fdb, as JSON
/// in `tests/fixtures/vm/`), through `/validate` over verified TLS: as
/// shipped and correctly opted in, allowed; a near miss of the opt-in and
/// each malformed setting, refused with a message naming the key.
#[test]
fn vms_with_malformed_settings_are_refused_at_apply_time_over_tls() {
    const VMS: [&str; 3] = [
        include_str!("../fixtures/vm/vm-cirros.json"),
        include_str!("../fixtures/vm/vm-alpine-datavolume.json"),
        include_str!("../fixtures/vm/vm-windows-clarge-windows.json"),
    ];
    const VM: Subject = Subject("kubevirt.io", "v1", "VirtualMachine", "virtualmachines");
    let tls = tls();
    let ca = tls.first.join("ca.crt");
    let webhook = Webhook::start(&tls.mount_dir, &ca, &[]).unwrap();
    let post = |vm: &Value| -> Value {
        let review = admission_review(&VM, vm.clone(), "vm-team", "admission.k8s.io/v1");
        let (status, body) = webhook.post("/validate", &review, &ca).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let with = |text: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]| {
        let mut vm: Value = serde_json::from_str(text).unwrap();
        for (k, v) in labels {
            vm["spec"]["template"]["metadata"]["labels"][*k] = json!(v);
        }
        for (k, v) in annotations {
            vm["spec"]["template"]["metadata"]["annotations"][*k] = json!(v);
        }
        vm
    };
    let opt_in = [("imds.kubevirt.io/enabled", "true")];
    for text in VMS {
        for vm in [
            with(text, &[], &[]),
            with(text, &opt_in, &[("imds.kubevirt.io/metadata-flavors", "nocloud,openstack,ec2")]),
        ] {
            let answer = post(&vm);
            assert_eq!(answer["response"]["allowed"], true, "{answer}");
            assert!(answer["response"].get("patch").is_none(), "a validating answer with a patch");
        }
        for (labels, annotations, key) in [
            (&[("imds.kubevirt.io/enabled", "yes")][..], &[][..], "imds.kubevirt.io/enabled"),
            (&[], &[("imds.kubevirt.io/enabled", "True")], "imds.kubevirt.io/enabled"),
            (
                &opt_in,
                &[("imds.kubevirt.io/token-expiration-seconds", "1h")],
                "imds.kubevirt.io/token-expiration-seconds",
            ),
            (&opt_in, &[("imds.kubevirt.io/metadata-flavors", "azure")], "imds.kubevirt.io/metadata-flavors"),
            (&opt_in, &[("imds.kubevirt.io/ec2-imdsv2", "sometimes")], "imds.kubevirt.io/ec2-imdsv2"),
            (&opt_in, &[("imds.kubevirt.io/default-token", "nope")], "imds.kubevirt.io/default-token"),
        ] {
            let answer = post(&with(text, labels, annotations));
            assert_eq!(answer["response"]["allowed"], false, "{key}: {answer}");
            let message = answer["response"]["status"]["message"].as_str().unwrap();
            assert!(message.contains(key), "{message}");
        }
    }
    let log = webhook.log();
    assert!(log.contains("decision=\"refused\"") && log.contains("VirtualMachine"), "{log}");
}
