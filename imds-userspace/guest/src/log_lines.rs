//! Log messages others wait for or search (the tests, operators' journals).

/// A token (and what goes beside it) was published.
pub const WRITTEN: &str = "token written";
/// A refresh failed; the previous files stay in place.
pub const REFRESH_FAILED: &str = "token refresh failed; the files written before stay in place";
/// The IMDS could not be asked what it serves yet.
pub const DISCOVERY_FAILED: &str = "cannot ask the IMDS what it serves yet";
/// Every target found; names them.
pub const KEEPING: &str = "keeping token files";
