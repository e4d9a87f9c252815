//! The guest recipes of `deploy/guest/`, run as a guest runs them, against
//! the real sidecar, with stand-ins for AWS STS and Vault that record what
//! they were sent (the real services are out of reach here).

use std::path::PathBuf;

use imds_tests::{
    imds::{Identity, Imds},
    netns::{exclusive, require_root},
    stand_in::{captured, form, install_cgi},
    tokens::{EXP, ProjectedVolume, jwt},
    topology::{Binding, GuestKind, PodLayout},
};

const ID: Identity = Identity { namespace: "vm-team", service_account: "builder", vm_name: "fedora-42" };
const ROLE: &str = "arn:aws:iam::111122223333:role/vm-reader";

fn recipe(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/guest").join(name)
}

#[test]
fn guest_recipes_work_against_the_real_sidecar() {
    let _serial = exclusive();
    require_root();
    let layout = PodLayout::build(Binding::Masquerade, GuestKind::Namespace).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let volume = ProjectedVolume::new(&dir.path().join("tokens")).unwrap();
    let exp = EXP;
    let (api, sts, vault, spire) = (
        jwt(ID.namespace, ID.service_account, exp, "api"),
        jwt(ID.namespace, ID.service_account, exp, "sts"),
        jwt(ID.namespace, ID.service_account, exp, "vault"),
        jwt(ID.namespace, ID.service_account, exp, "spire"),
    );
    volume
        .publish_files(&[
            ("token", api.as_bytes()),
            ("audience-0", sts.as_bytes()),
            ("audience-1", vault.as_bytes()),
            ("audience-2", spire.as_bytes()),
        ])
        .unwrap();
    let args = ["--token-audience", "sts.amazonaws.com,vault,spire-server", "--aws-role-arn", ROLE];
    let mut sidecar = Imds::start(&layout.pod, &ID, volume.dir(), &args).unwrap();
    sidecar.wait_until_guest_attached().unwrap();

    // Stand-ins for STS and Vault on the pod's bridge address.
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
    let captures = dir.path().join("captures");
    std::fs::create_dir_all(&captures).unwrap();
    let sts_reply = "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
                     <AccessKeyId>ASIAFAKEACCESSKEY</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult>\
                     </AssumeRoleWithWebIdentityResponse>";
    for (name, content_type, reply) in [
        ("sts", "text/xml", sts_reply),
        ("vault", "application/json", r#"{"auth":{"client_token":"hvs.fake-vault-token"}}"#),
    ] {
        install_cgi(&www, &captures, name, content_type, reply).unwrap();
    }
    let _services = layout.pod.http_server("10.0.2.1", 8080, &www).unwrap();
    let guest = layout.guest();
    let run = |env: &[(&str, String)], script: &str| -> String {
        let mut c = guest.command("env");
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        let out = c.arg("sh").arg(recipe(script)).output().unwrap();
        assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let captured = |name: &str, part: &str| captured(&captures, name, part).unwrap();

    // AWS STS, by hand.
    let out = run(&[("STS_ENDPOINT", "http://10.0.2.1:8080/cgi-bin/sts".into())], "aws-assume-role.sh");
    assert!(out.contains("ASIAFAKEACCESSKEY"), "{out}");
    let sent = form(&captured("sts", "body"));
    assert_eq!(sent["Action"], "AssumeRoleWithWebIdentity");
    assert_eq!(sent["RoleArn"], ROLE);
    assert_eq!(sent["WebIdentityToken"], sts, "STS got another token than the sts.amazonaws.com one");
    assert!(captured("sts", "request").starts_with("POST"));

    // AWS SDKs: the token file and the two variables.
    let token_file = dir.path().join("aws/web-identity-token");
    let out = run(&[("TOKEN_FILE", token_file.display().to_string())], "aws-web-identity-file.sh");
    assert!(out.contains(&format!("export AWS_ROLE_ARN={ROLE}")), "{out}");
    assert!(out.contains(&format!("export AWS_WEB_IDENTITY_TOKEN_FILE={}", token_file.display())), "{out}");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim_end(), sts);

    // Vault.
    let out = run(
        &[("VAULT_ADDR", "http://10.0.2.1:8080/cgi-bin/vault".into()), ("VAULT_ROLE", "vm-reader".into())],
        "vault-login.sh",
    );
    assert!(out.contains("hvs.fake-vault-token"), "{out}");
    assert_eq!(captured("vault", "request").trim(), "POST /v1/auth/kubernetes/login");
    let login: serde_json::Value = serde_json::from_str(&captured("vault", "body")).unwrap();
    assert_eq!(login, serde_json::json!({"role": "vm-reader", "jwt": vault}));

    // SPIRE agent token file.
    let spire_file = dir.path().join("spire/agent-token");
    run(&[("TOKEN_FILE", spire_file.display().to_string())], "spire-agent-token.sh");
    assert_eq!(std::fs::read_to_string(&spire_file).unwrap().trim_end(), spire);
}
