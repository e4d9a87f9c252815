//! What the webhook injects and the sidecar expects: one definition of every
//! name both sides must agree on.

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "kubevirt-imds";
/// Name of the projected token volume.
pub const TOKEN_VOLUME: &str = "kubevirt-imds-token";
/// Where the token volume is mounted in the sidecar, and the file in it.
pub const TOKEN_DIR: &str = "/var/run/secrets/kubevirt-imds/serviceaccount";
pub const TOKEN_FILE_NAME: &str = "token";
pub const TOKEN_FILE: &str = "/var/run/secrets/kubevirt-imds/serviceaccount/token";
/// The binary's path in the image (the startup probe executes it).
pub const BINARY_PATH: &str = "/usr/local/bin/kubevirt-imds";

/// Environment of the sidecar (each also a command-line flag).
pub const ENV_NAMESPACE: &str = "IMDS_NAMESPACE";
pub const ENV_POD_NAME: &str = "IMDS_POD_NAME";
pub const ENV_SERVICE_ACCOUNT_NAME: &str = "IMDS_SERVICE_ACCOUNT_NAME";
pub const ENV_VM_NAME: &str = "IMDS_VM_NAME";
pub const ENV_TOKEN_FILE: &str = "IMDS_TOKEN_FILE";
pub const ENV_BRIDGE_NAME: &str = "IMDS_BRIDGE_NAME";
pub const ENV_LOG_FORMAT: &str = "IMDS_LOG_FORMAT";

/// Linux interface names: 1–15 bytes, no `/`, `:`, whitespace or control
/// characters, not `.` or `..`. Checked for `--bridge` and for the
/// `imds.kubevirt.io/bridge-name` annotation alike.
pub fn check_interface_name(name: &str) -> Result<(), &'static str> {
    let valid = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control());
    if valid { Ok(()) } else { Err("not a valid interface name (1-15 bytes, no '/', ':' or whitespace)") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_file_is_in_token_dir() {
        assert_eq!(super::TOKEN_FILE, format!("{}/{}", super::TOKEN_DIR, super::TOKEN_FILE_NAME));
    }
}
