//! One module per subcommand of `kubevirt-imds-sidecar` (see [`crate::cli`]):
//! the effects, around the pure parts elsewhere in the crate.

pub mod probe;
pub mod run;
pub mod serve;
