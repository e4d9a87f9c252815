//! The real `kubevirt-imds webhook` process, and an HTTPS client (curl)
//! that verifies its certificate against a CA bundle.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use crate::netns::run;

/// What an AdmissionReview asks about: `(group, version, kind, resource)`.
pub struct Subject(pub &'static str, pub &'static str, pub &'static str, pub &'static str);

pub const POD: Subject = Subject("", "v1", "Pod", "pods");
/// KubeVirt's VMI (`staging/src/kubevirt.io/api/core/v1/register.go`).
pub const VMI: Subject = Subject("kubevirt.io", "v1", "VirtualMachineInstance", "virtualmachineinstances");

/// The request UID every review built here carries.
pub const REQUEST_UID: &str = "3b0a39a6-5c0c-4c3c-9d0e-1d5e8f6d2a11";

/// An AdmissionReview (of `api_version`) for creating `object` in
/// `namespace`, as the API server sends it when KubeVirt's controller
/// creates the object.
pub fn admission_review(subject: &Subject, object: Value, namespace: &str, api_version: &str) -> Vec<u8> {
    let Subject(group, version, kind, resource) = subject;
    let review = json!({
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": REQUEST_UID,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kubevirt:kubevirt-controller"},
            "object": object,
            "dryRun": false
        }
    });
    serde_json::to_vec(&review).expect("a JSON value serialises")
}

/// `object` with the JSONPatch of an AdmissionReview answer applied
/// (unchanged when the answer carries none).
pub fn patched(object: &Value, answer: &Value) -> anyhow::Result<Value> {
    let mut doc = object.clone();
    if let Some(b64) = answer["response"]["patch"].as_str() {
        let patch: json_patch::Patch = serde_json::from_slice(&STANDARD.decode(b64)?)?;
        json_patch::patch(&mut doc, &patch)?;
    }
    Ok(doc)
}

/// The name the generated certificates are for.
pub const SERVICE_DNS: &str = "kubevirt-imds-webhook.kubevirt-imds.svc";

/// The webhook binary: `cargo xtask test` builds it and passes its path.
pub fn binary() -> PathBuf {
    crate::built_binary("IMDS_WEBHOOK_BIN", "kubevirt-imds-webhook")
}

/// `cargo xtask` itself: `cargo xtask test` passes its path.
pub fn xtask_binary() -> PathBuf {
    crate::built_binary("IMDS_XTASK_BIN", "xtask")
}

/// `cargo xtask generate-certs --out-dir <dir>`.
pub fn generate_certs(dir: &Path) -> anyhow::Result<()> {
    generate_certs_with(dir, &[])
}

/// [`generate_certs`] with more flags (e.g. `--rotate-ca`).
pub fn generate_certs_with(dir: &Path, flags: &[&str]) -> anyhow::Result<()> {
    run(Command::new(xtask_binary()).arg("generate-certs").arg("--out-dir").arg(dir).args(flags)).map(drop)
}

/// The same for another service: the certificate is for `<service>.<namespace>.svc`.
pub fn generate_certs_for(dir: &Path, service: &str, namespace: &str) -> anyhow::Result<()> {
    let mut c = Command::new(xtask_binary());
    c.args(["generate-certs", "--service", service, "--namespace", namespace, "--out-dir"]).arg(dir);
    run(&mut c).map(drop)
}

pub struct Webhook {
    child: Child,
    pub port: u16,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Webhook {
    /// Starts the webhook on 127.0.0.1 with the certificate in `tls_dir`
    /// (`tls.crt`, `tls.key`) and waits until `ca` trusts what it serves.
    pub fn start(tls_dir: &Path, ca: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(tls_dir, ca, extra, &[])
    }

    /// [`Webhook::start`] with extra environment (e.g. `KUBECONFIG`).
    pub fn start_with_env(
        tls_dir: &Path,
        ca: &Path,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join("webhook.log");
        let child = Command::new(binary())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert-file")
            .arg(tls_dir.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(tls_dir.join("tls.key"))
            .args(["--sidecar-image", "registry.example/kubevirt-imds:test"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting the webhook")?;
        let mut webhook = Self { child, port, log, _log_dir: log_dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, _)) = webhook.get("/readyz", ca) {
                return Ok(webhook);
            }
            if let Some(status) = webhook.child.try_wait()? {
                bail!("webhook exited ({status}):\n{}", webhook.log());
            }
            if Instant::now() > deadline {
                bail!("webhook not ready within 10s:\n{}", webhook.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (e.g. killed by the OOM killer).
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// A curl command for `path` with our TLS settings and no time limit of
    /// its own beyond `max_time` (for slow bodies).
    pub fn curl_to(&self, path: &str, ca: &Path, max_time: Duration) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "-m", &max_time.as_secs().to_string(), "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(ca)
            .args(["--resolve", &format!("{SERVICE_DNS}:{}:127.0.0.1", self.port)])
            .arg(self.url(path));
        c
    }

    fn curl(&self, ca: &Path) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "-m", "10", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(ca)
            .args(["--resolve", &format!("{SERVICE_DNS}:{}:127.0.0.1", self.port)]);
        c
    }

    fn url(&self, path: &str) -> String {
        format!("https://{SERVICE_DNS}:{}{path}", self.port)
    }

    /// GET over HTTPS verified against `ca`: (status, body).
    pub fn get(&self, path: &str, ca: &Path) -> anyhow::Result<(u16, String)> {
        status_and_body(run(self.curl(ca).arg(self.url(path)))?)
    }

    /// POST `body` over HTTPS verified against `ca`: (status, body).
    pub fn post(&self, path: &str, body: &[u8], ca: &Path) -> anyhow::Result<(u16, String)> {
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), body)?;
        let mut c = self.curl(ca);
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", file.path().display()))
            .arg(self.url(path));
        status_and_body(run(&mut c)?)
    }
}

fn status_and_body(out: String) -> anyhow::Result<(u16, String)> {
    let (body, status) = out.rsplit_once('\n').context("no status line from curl")?;
    Ok((status.trim().parse()?, body.to_owned()))
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
