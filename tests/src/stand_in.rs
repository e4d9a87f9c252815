//! Stand-ins for the remote services a guest presents its token to (AWS
//! STS, Vault), which are out of reach here: CGI scripts for busybox httpd
//! that record what they were sent and answer a fixed reply.

use std::{collections::HashMap, path::Path};

/// A CGI script: records `REQUEST_METHOD PATH_INFO` in `<capture>.request`
/// and the body in `<capture>.body`, answers `reply` as `content_type`.
pub fn cgi(capture: &Path, content_type: &str, reply: &str) -> String {
    format!(
        "#!/bin/sh\necho \"$REQUEST_METHOD $PATH_INFO\" > {c}.request\nhead -c \"${{CONTENT_LENGTH:-0}}\" > {c}.body\n\
         printf 'Content-Type: {content_type}\\r\\n\\r\\n'\ncat <<'REPLY'\n{reply}\nREPLY\n",
        c = capture.display()
    )
}

/// Installs [`cgi`] as `<www>/cgi-bin/<name>`, capturing into `captures/<name>`.
pub fn install_cgi(
    www: &Path,
    captures: &Path,
    name: &str,
    content_type: &str,
    reply: &str,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(www.join("cgi-bin"))?;
    std::fs::create_dir_all(captures)?;
    let script = www.join("cgi-bin").join(name);
    std::fs::write(&script, cgi(&captures.join(name), content_type, reply))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// What `<captures>/<name>.<part>` recorded (`request` or `body`).
pub fn captured(captures: &Path, name: &str, part: &str) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(captures.join(format!("{name}.{part}")))?)
}

/// An `application/x-www-form-urlencoded` body, as a map.
pub fn form(body: &str) -> HashMap<String, String> {
    form_urlencoded::parse(body.trim().as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// AWS STS's answer to `AssumeRoleWithWebIdentity`, complete enough for
/// the SDKs to parse: credentials valid for an hour from now.
pub fn sts_assume_role_reply(access_key: &str) -> String {
    let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let expires = humantime::format_rfc3339_seconds(expires);
    format!(
        "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>{access_key}</AccessKeyId>\
         <SecretAccessKey>fake-secret-key</SecretAccessKey><SessionToken>fake-session-token</SessionToken>\
         <Expiration>{expires}</Expiration></Credentials>\
         <SubjectFromWebIdentityToken>system:serviceaccount:vm-team:builder</SubjectFromWebIdentityToken>\
         <AssumedRoleUser><Arn>arn:aws:sts::111122223333:assumed-role/vm-reader/s</Arn>\
         <AssumedRoleId>AROAFAKE:s</AssumedRoleId></AssumedRoleUser></AssumeRoleWithWebIdentityResult>\
         <ResponseMetadata><RequestId>00000000-0000-4000-8000-000000000000</RequestId></ResponseMetadata>\
         </AssumeRoleWithWebIdentityResponse>"
    )
}
