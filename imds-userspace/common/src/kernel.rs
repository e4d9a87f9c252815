//! What the node's kernel offers the data path, from its release string.
//! One definition for the agent (which says at start what is degraded) and
//! the tests (which expect the attachments of that kernel).

/// The first kernel with TCX links (which can be pinned in bpffs).
pub const TCX_SINCE: (u32, u32) = (6, 6);

/// The line the agent logs at start on a kernel without TCX.
pub const LOG_LEGACY_TC: &str = "no TCX on this kernel: programs attach as legacy tc filters";

/// `major.minor` of a release such as `5.10.0-32-amd64` or `6.18.0`;
/// `None` for anything else.
pub fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether a kernel of `release` has TCX. An unreadable release counts
/// as not: the legacy path works on every kernel.
pub fn has_tcx(release: &str) -> bool {
    major_minor(release).is_some_and(|v| v >= TCX_SINCE)
}

/// The running kernel's release (`uname -r`), empty if unreadable.
pub fn running_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_of_the_kernels_we_test_on() {
        assert_eq!(major_minor("5.10.0-32-amd64"), Some((5, 10)));
        assert_eq!(major_minor("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(major_minor("5.14.0-427.13.1.el9_4.x86_64"), Some((5, 14)));
        assert_eq!(major_minor("6.18.0"), Some((6, 18)));
        assert!(!has_tcx("5.10.0-32-amd64"));
        assert!(!has_tcx("6.1.0-56-amd64"));
        assert!(!has_tcx("6.5.13"));
        assert!(has_tcx("6.6.0"));
        assert!(has_tcx("6.18.0"));
    }

    #[test]
    fn garbage_is_not_a_kernel_with_tcx() {
        for release in ["", "linux", "6", "6.x", "-1.2", "99999999999.1"] {
            assert!(!has_tcx(release), "{release:?}");
        }
    }
}
