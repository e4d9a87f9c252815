//! `cargo xtask generate-certs`: TLS for the webhook on clusters without
//! cert-manager: a private CA, a serving certificate for the webhook's
//! Service, the `kubernetes.io/tls` Secret and the caBundle patch for the
//! `self-signed` kustomize overlay.
//!
//! Renewals must not open a gap: the API server trusts the `caBundle` as
//! soon as it is applied, while the pods serve the old certificate until
//! the kubelet syncs the Secret and the webhook reloads it (a minute or
//! two). So a run keeps the CA it finds in the output directory and renews
//! only the serving certificate, and the bundle stays the same. With
//! `--rotate-ca` a new CA signs the new certificate and the bundle carries
//! the previous CA and the new one, so both certificates are trusted during
//! the switch; the next rotation drops the older CA.

use std::{os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// Names the base kustomization uses.
pub const SECRET_NAME: &str = "kubevirt-imds-webhook-tls";
pub const WEBHOOK_CONFIGURATION: &str = "kubevirt-imds";

pub struct Request<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
    /// Validity of the serving certificate.
    pub days: u32,
    /// Validity of a new CA.
    pub ca_days: u32,
    /// Make a new CA even if the output directory has one.
    pub rotate_ca: bool,
    pub out_dir: &'a Path,
}

/// The CA's files in the output directory (the key stays there, mode 0600,
/// next to the Secret's).
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
/// The CA before the last rotation, kept in the bundle until the next.
const PREVIOUS_CA_CERT: &str = "previous-ca.crt";

pub fn generate(r: &Request) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let not_after = now + Duration::days(i64::from(r.days));
    std::fs::create_dir_all(r.out_dir).with_context(|| format!("creating {}", r.out_dir.display()))?;
    let write = |name: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let path = r.out_dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };

    let existing = read_ca(r.out_dir)?;
    let (ca, ca_what) = match existing {
        Some(ca) if !r.rotate_ca => {
            anyhow::ensure!(
                ca.not_after >= not_after,
                "the CA in {} expires on {}, before the new certificate would ({not_after}): run with --rotate-ca",
                r.out_dir.display(),
                ca.not_after
            );
            (ca, "kept the CA")
        }
        previous => {
            match &previous {
                Some(old) => write(PREVIOUS_CA_CERT, &old.pem, 0o644)?,
                None => {
                    let _ = std::fs::remove_file(r.out_dir.join(PREVIOUS_CA_CERT));
                }
            }
            let ca = new_ca(r.namespace, now, now + Duration::days(i64::from(r.ca_days)))?;
            write(CA_CERT, &ca.pem, 0o644)?;
            write(CA_KEY, &ca.issuer.key().serialize_pem(), 0o600)?;
            (
                ca,
                if previous.is_some() {
                    "rotated the CA (the bundle holds the previous one too)"
                } else {
                    "made a CA"
                },
            )
        }
    };

    let dns: Vec<String> = [
        r.service.to_owned(),
        format!("{}.{}", r.service, r.namespace),
        format!("{}.{}.svc", r.service, r.namespace),
        format!("{}.{}.svc.cluster.local", r.service, r.namespace),
    ]
    .into();
    let mut params = CertificateParams::new(dns.clone())?;
    params.distinguished_name = name(&dns[2]);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = (now - Duration::minutes(5), not_after);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.issuer)?;

    let bundle = match std::fs::read_to_string(r.out_dir.join(PREVIOUS_CA_CERT)) {
        Ok(previous) => format!("{previous}{}", ca.pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ca.pem.clone(),
        Err(e) => return Err(e).context("reading the previous CA"),
    };
    write("ca-bundle.crt", &bundle, 0o644)?;
    write("tls.crt", &cert.pem(), 0o644)?;
    write("tls.key", &key.serialize_pem(), 0o600)?;
    write("secret.yaml", &secret_yaml(r.namespace, &cert.pem(), &key.serialize_pem()), 0o600)?;
    write("cabundle-patch.yaml", &cabundle_patch(&STANDARD.encode(&bundle)), 0o644)?;
    write("cabundle-validating-patch.yaml", &cabundle_validating_patch(&STANDARD.encode(&bundle)), 0o644)?;
    eprintln!(
        "{ca_what}; wrote tls.crt, tls.key, secret.yaml, ca-bundle.crt and the caBundle patches to {} \
         (certificate valid {} days, for {})",
        r.out_dir.display(),
        r.days,
        dns[2]
    );
    Ok(())
}

/// A CA: what signs, and its certificate exactly as the bundle holds it.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    not_after: OffsetDateTime,
}

fn new_ca(namespace: &str, now: OffsetDateTime, not_after: OffsetDateTime) -> anyhow::Result<Ca> {
    let mut params = CertificateParams::default();
    // A distinct name per CA: clients holding an old and a new CA during a
    // rotation pick the issuer by name.
    params.distinguished_name =
        name(&format!("kubevirt-imds webhook CA ({namespace}) {}", now.unix_timestamp_nanos()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = (now - Duration::minutes(5), not_after);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let pem = issuer.pem();
    let key = KeyPair::from_pem(&issuer.key().serialize_pem())?;
    Ok(Ca { issuer: Issuer::from_ca_cert_pem(&pem, key)?, pem, not_after })
}

/// The CA in `dir`, if both its files are there.
fn read_ca(dir: &Path) -> anyhow::Result<Option<Ca>> {
    let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let (pem, key) = match (std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path)) {
        (Ok(cert), Ok(key)) => (cert, key),
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        (Err(e), _) | (_, Err(e)) => return Err(e).context("reading the CA"),
    };
    let key =
        KeyPair::from_pem(&key).with_context(|| format!("{}: not a private key", key_path.display()))?;
    let not_after = not_after(&pem).with_context(|| format!("{}: not a certificate", cert_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&pem, key)
        .with_context(|| format!("{}: not a CA certificate", cert_path.display()))?;
    Ok(Some(Ca { issuer, pem, not_after }))
}
/// When the PEM certificate `pem` expires.
fn not_after(pem: &str) -> anyhow::Result<OffsetDateTime> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())?;
    Ok(pem.parse_x509()?.validity().not_after.to_datetime())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// YAML block scalar lines, indented.
fn indented(text: &str, indent: usize) -> String {
    text.lines().map(|l| format!("{}{l}\n", " ".repeat(indent))).collect()
}

fn secret_yaml(namespace: &str, cert: &str, key: &str) -> String {
    format!(
        "# Generated by `cargo xtask generate-certs`. Contains a private key: do not commit.\n\
         apiVersion: v1\nkind: Secret\nmetadata:\n  name: {SECRET_NAME}\n  namespace: {namespace}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indented(cert, 4),
        indented(key, 4)
    )
}

/// The webhooks of deploy/base/mutatingwebhookconfiguration.yaml.
const WEBHOOK_NAMES: [&str; 2] = ["imds.kubevirt.io", "vmis.imds.kubevirt.io"];

fn cabundle_patch(ca_bundle_b64: &str) -> String {
    format!(
        "# Generated by `cargo xtask generate-certs`: the CA that signed the webhook's certificate.\n\
         apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\n\
         metadata:\n  name: {WEBHOOK_CONFIGURATION}\nwebhooks:\n{}",
        // Every webhook of the configuration (pods, VMIs) trusts the same CA.
        WEBHOOK_NAMES
            .iter()
            .map(|name| format!("  - name: {name}\n    clientConfig:\n      caBundle: {ca_bundle_b64}\n"))
            .collect::<String>()
    )
}

/// The webhook of deploy/base/validatingwebhookconfiguration.yaml.
const VALIDATING_WEBHOOK_NAME: &str = "validate.imds.kubevirt.io";

fn cabundle_validating_patch(ca_bundle_b64: &str) -> String {
    format!(
        "# Generated by `cargo xtask generate-certs`: the CA that signed the webhook's certificate.\n\
         apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\n\
         metadata:\n  name: {WEBHOOK_CONFIGURATION}\nwebhooks:\n  - name: {VALIDATING_WEBHOOK_NAME}\n    \
         clientConfig:\n      caBundle: {ca_bundle_b64}\n"
    )
}
