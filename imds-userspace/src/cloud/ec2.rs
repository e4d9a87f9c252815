//! The EC2 instance metadata service: `/` lists versions, every version
//! holds the same tree (`meta-data/` with `instance-id`, `hostname`,
//! `local-hostname`; `user-data`; `dynamic/instance-identity/document`),
//! directories list their entries one per line, subdirectories ending in
//! `/`. Sessions (IMDSv2) are in [`super::imdsv2`].

use serde_json::json;

use super::{InstanceFacts, Missing, Resource, Segments, listing};

/// The versions served: what cloud-init probes (newest first:
/// 2021-03-23, 2018-09-24, 2016-09-02, then 2009-04-04), `1.0`, and the
/// `latest` the AWS SDKs use.
pub const VERSIONS: [&str; 6] = ["1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "latest"];

/// The token route (only under `latest`, as on AWS).
pub const TOKEN_PATH: &str = "/latest/api/token";

pub fn is_ec2_path(path: &Segments) -> bool {
    path.parts.is_empty() || path.parts.first().is_some_and(|v| VERSIONS.contains(v))
}

pub fn resolve(path: &Segments, facts: &InstanceFacts) -> Option<Resource> {
    let dir = |entries: &[&str]| Some(Resource::Text(listing(entries)));
    let leaf = |text: &str| (!path.trailing_slash).then(|| Resource::Text(text.to_owned()));
    match path.parts.as_slice() {
        [] => dir(&VERSIONS),
        [version, rest @ ..] if VERSIONS.contains(version) => match rest {
            [] => dir(&["dynamic/", "meta-data/", "user-data"]),
            ["meta-data"] => dir(&["hostname", "instance-id", "local-hostname"]),
            ["meta-data", "instance-id"] => leaf(&facts.instance_id),
            ["meta-data", "hostname" | "local-hostname"] => leaf(&facts.hostname),
            ["user-data"] if !path.trailing_slash => Some(Resource::UserData(Missing::NotFound)),
            ["dynamic"] => dir(&["instance-identity/"]),
            ["dynamic", "instance-identity"] => dir(&["document"]),
            ["dynamic", "instance-identity", "document"] if !path.trailing_slash => {
                Some(Resource::Json(json!({ "instanceId": facts.instance_id, "version": "2017-09-30" })))
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str) -> Option<Resource> {
        resolve(&Segments::parse(path)?, &InstanceFacts::new("vm", "ns", None))
    }

    fn text(path: &str) -> String {
        match at(path) {
            Some(Resource::Text(t)) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn the_tree() {
        assert!(text("/").lines().any(|v| v == "2021-03-23"));
        assert_eq!(text("/latest/meta-data/"), "hostname\ninstance-id\nlocal-hostname");
        assert_eq!(text("/latest/meta-data"), text("/latest/meta-data/"));
        assert_eq!(text("/2021-03-23/meta-data/instance-id"), "vm.ns");
        assert_eq!(text("/2009-04-04/meta-data/local-hostname"), "vm");
        assert_eq!(text("/latest/dynamic/instance-identity"), "document");
        assert_eq!(at("/latest/user-data"), Some(Resource::UserData(Missing::NotFound)));
        let Some(Resource::Json(doc)) = at("/latest/dynamic/instance-identity/document") else { panic!() };
        assert_eq!(doc["instanceId"], "vm.ns");
        for bad in [
            "/2030-01-01/meta-data/",
            "/latest/meta-data/instance-id/",
            "/latest/meta-data/ami-id",
            "/latest/meta-data/../user-data",
            "/latest/meta-data/iam/security-credentials/",
            "/latest/user-data/",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
        assert!(is_ec2_path(&Segments::parse("/latest/x").unwrap()));
        assert!(!is_ec2_path(&Segments::parse("/v1/token").unwrap()));
    }
}
