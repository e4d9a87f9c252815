//! The EC2 instance metadata service: `/` lists versions, every version
//! holds the same tree (`meta-data/` with `instance-id`, `hostname`,
//! `local-hostname`, `local-ipv4`, `placement/`, `public-keys/`;
//! `user-data`; `dynamic/instance-identity/document`), directories list
//! exactly the entries that resolve, one per line, subdirectories ending in
//! `/`. Leaf values carry no trailing newline: cloud-init's EC2 helper turns
//! a value containing `\n` into a list. Sessions (IMDSv2) are in
//! [`super::imdsv2`].

use serde_json::json;

use super::{Client, InstanceFacts, Missing, PublicKey, Resource, Segments, listing};

/// The versions served, oldest first, `latest` last: what cloud-init probes
/// (newest first: 2021-03-23, 2018-09-24, 2016-09-02, then 2009-04-04),
/// `1.0`, cloudbase-init's `2009-04-04`, Ignition's `2019-10-01`
/// (internal/providers/aws/aws.go), Afterburn's `2021-01-03`
/// (src/providers/aws/mod.rs), and the `latest` of the AWS SDKs.
pub const VERSIONS: [&str; 8] =
    ["1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2019-10-01", "2021-01-03", "2021-03-23", "latest"];

/// The token route (only under `latest`, as on AWS).
pub const TOKEN_PATH: &str = "/latest/api/token";

pub fn is_ec2_path(path: &Segments) -> bool {
    path.parts.is_empty() || path.parts.first().is_some_and(|v| VERSIONS.contains(v))
}

pub fn resolve(path: &Segments, facts: &InstanceFacts, client: &Client) -> Option<Resource> {
    let dir = |entries: &[&str]| Some(Resource::Text(listing(entries)));
    match path.parts.as_slice() {
        [] => dir(&VERSIONS),
        [version, rest @ ..] if VERSIONS.contains(version) => match rest {
            [] => dir(&["dynamic/", "meta-data/", "user-data"]),
            ["meta-data", rest @ ..] => meta_data(rest, path.trailing_slash, facts, client),
            ["user-data"] if !path.trailing_slash => Some(Resource::UserData(Missing::NotFound)),
            ["dynamic"] => dir(&["instance-identity/"]),
            ["dynamic", "instance-identity"] => dir(&["document"]),
            ["dynamic", "instance-identity", "document"] if !path.trailing_slash => {
                Some(Resource::Json(identity_document(facts, client)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// `meta-data/…`; `rest` is what follows `meta-data`.
fn meta_data(
    rest: &[&str],
    trailing_slash: bool,
    facts: &InstanceFacts,
    client: &Client,
) -> Option<Resource> {
    let dir = |entries: &[&str]| Some(Resource::Text(listing(entries)));
    let leaf = |text: &str| (!trailing_slash).then(|| Resource::Text(text.to_owned()));
    match rest {
        [] => {
            let mut entries = vec!["hostname", "instance-id", "local-hostname"];
            // Listed only when known, so that every entry resolves.
            if client.ipv4.is_some() {
                entries.push("local-ipv4");
            }
            entries.extend(["placement/", "public-keys/"]);
            dir(&entries)
        }
        ["instance-id"] => leaf(&facts.instance_id),
        ["hostname" | "local-hostname"] => leaf(&facts.hostname),
        ["local-ipv4"] => leaf(&client.ipv4?.to_string()),
        ["placement"] => dir(&["availability-zone", "region"]),
        ["placement", "availability-zone"] => leaf(&facts.availability_zone),
        ["placement", "region"] => leaf(&facts.region),
        // An empty 200 without keys, not AWS's 404: cloudbase-init's
        // EC2Service fails on a 404 here.
        ["public-keys"] => Some(Resource::Text(public_keys_listing(&facts.public_keys))),
        ["public-keys", index] => key_at(&facts.public_keys, index).and_then(|_| dir(&["openssh-key"])),
        ["public-keys", index, "openssh-key"] => leaf(&key_at(&facts.public_keys, index)?.openssh_key),
        _ => None,
    }
}

/// `N=name` per key, as AWS lists them; `public-keys/N/openssh-key` holds the key.
fn public_keys_listing(keys: &[PublicKey]) -> String {
    let entries: Vec<String> = keys.iter().enumerate().map(|(i, key)| format!("{i}={}", key.name)).collect();
    listing(&entries)
}

/// The key listed as `index`, in its canonical spelling only (`usize`'s
/// parser would also take `+0` and `00`).
fn key_at<'a>(keys: &'a [PublicKey], index: &str) -> Option<&'a PublicKey> {
    keys.iter().enumerate().find(|(i, _)| i.to_string() == index).map(|(_, key)| key)
}

/// What the AWS SDKs and Afterburn read: Afterburn parses it into a struct
/// whose `region` is not optional, and the Go SDK's `GetRegion` refuses an
/// empty one.
fn identity_document(facts: &InstanceFacts, client: &Client) -> serde_json::Value {
    let mut document = json!({
        "instanceId": facts.instance_id,
        "region": facts.region,
        "availabilityZone": facts.availability_zone,
        "version": "2017-09-30",
    });
    if let Some(ip) = client.ipv4 {
        document["privateIp"] = json!(ip.to_string());
    }
    document
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const GUEST: Client = Client { ipv4: Some(Ipv4Addr::new(10, 0, 2, 2)) };

    fn facts() -> InstanceFacts {
        InstanceFacts::new("vm", "ns", None).with_placement("us-east-1", "us-east-1a")
    }

    fn at_with(path: &str, facts: &InstanceFacts, client: &Client) -> Option<Resource> {
        resolve(&Segments::parse(path)?, facts, client)
    }

    fn at(path: &str) -> Option<Resource> {
        at_with(path, &facts(), &GUEST)
    }

    fn text(path: &str) -> String {
        match at(path) {
            Some(Resource::Text(t)) => t,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn the_tree() {
        assert_eq!(
            text("/"),
            "1.0\n2009-04-04\n2016-09-02\n2018-09-24\n2019-10-01\n2021-01-03\n2021-03-23\nlatest"
        );
        assert_eq!(
            text("/latest/meta-data/"),
            "hostname\ninstance-id\nlocal-hostname\nlocal-ipv4\nplacement/\npublic-keys/"
        );
        assert_eq!(text("/latest/meta-data"), text("/latest/meta-data/"));
        assert_eq!(text("/2021-03-23/meta-data/instance-id"), "vm.ns");
        assert_eq!(text("/2009-04-04/meta-data/local-hostname"), "vm");
        assert_eq!(text("/2021-01-03/meta-data/local-ipv4"), "10.0.2.2");
        assert_eq!(text("/latest/meta-data/placement/"), "availability-zone\nregion");
        assert_eq!(text("/2021-01-03/meta-data/placement/availability-zone"), "us-east-1a");
        assert_eq!(text("/latest/meta-data/placement/region"), "us-east-1");
        assert_eq!(text("/2009-04-04/meta-data/public-keys"), "");
        assert_eq!(text("/latest/meta-data/public-keys/"), "");
        assert_eq!(text("/latest/dynamic/instance-identity"), "document");
        assert_eq!(at("/2019-10-01/user-data"), Some(Resource::UserData(Missing::NotFound)));
        let Some(Resource::Json(doc)) = at("/latest/dynamic/instance-identity/document") else { panic!() };
        assert_eq!(
            doc,
            json!({"instanceId": "vm.ns", "region": "us-east-1", "availabilityZone": "us-east-1a",
                   "privateIp": "10.0.2.2", "version": "2017-09-30"})
        );
        for bad in [
            "/2030-01-01/meta-data/",
            "/latest/meta-data/instance-id/",
            "/latest/meta-data/ami-id",
            "/latest/meta-data/../user-data",
            "/latest/meta-data/placement/../instance-id",
            "/latest/meta-data/placement/availability-zone-id",
            "/latest/meta-data/placement/region/",
            "/latest/meta-data/local-ipv4/",
            "/latest/meta-data/public-keys/0",
            "/latest/meta-data/public-keys/0/openssh-key",
            "/latest/meta-data/iam/security-credentials/",
            "/latest/user-data/",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
        assert!(is_ec2_path(&Segments::parse("/latest/x").unwrap()));
        assert!(!is_ec2_path(&Segments::parse("/v1/token").unwrap()));
    }

    #[test]
    fn without_the_client_address_local_ipv4_is_neither_listed_nor_served() {
        let unknown = Client::default();
        let Some(Resource::Text(listing)) = at_with("/latest/meta-data/", &facts(), &unknown) else {
            panic!()
        };
        assert!(!listing.lines().any(|l| l == "local-ipv4"), "{listing}");
        assert_eq!(at_with("/latest/meta-data/local-ipv4", &facts(), &unknown), None);
        let Some(Resource::Json(doc)) =
            at_with("/latest/dynamic/instance-identity/document", &facts(), &unknown)
        else {
            panic!()
        };
        assert_eq!(doc.get("privateIp"), None);
        assert_eq!(doc["region"], "us-east-1");
    }

    #[test]
    fn public_keys_are_listed_as_aws_does() {
        let mut facts = facts();
        facts.public_keys = vec![
            PublicKey { name: "laptop".into(), openssh_key: "ssh-ed25519 AAAA laptop".into() },
            PublicKey { name: "ci".into(), openssh_key: "ssh-ed25519 BBBB ci".into() },
        ];
        let at = |path| at_with(path, &facts, &GUEST);
        assert_eq!(at("/latest/meta-data/public-keys"), Some(Resource::Text("0=laptop\n1=ci".into())));
        assert_eq!(at("/latest/meta-data/public-keys/1/"), Some(Resource::Text("openssh-key".into())));
        assert_eq!(
            at("/latest/meta-data/public-keys/1/openssh-key"),
            Some(Resource::Text("ssh-ed25519 BBBB ci".into()))
        );
        for bad in [
            "/latest/meta-data/public-keys/2/openssh-key",
            "/latest/meta-data/public-keys/+0/openssh-key",
            "/latest/meta-data/public-keys/00/",
            "/latest/meta-data/public-keys/0/openssh-key/",
            "/latest/meta-data/public-keys/0/../1/openssh-key",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    /// Every entry of every listing resolves, recursively from `/`, and no
    /// leaf ends in a newline. Read as the clients read them: versions (the
    /// root's entries, listed without `/` as on AWS) and `N=name` keys are
    /// directories.
    fn walk(dir: &str, facts: &InstanceFacts, client: &Client, seen: &mut usize) {
        let Some(Resource::Text(listing)) = at_with(dir, facts, client) else {
            panic!("{dir} is not a listing")
        };
        for entry in listing.lines() {
            *seen += 1;
            let path = match entry.split_once('=') {
                Some((index, _)) => format!("{dir}{index}/"),
                None if dir == "/" => format!("/{entry}/"),
                None => format!("{dir}{entry}"),
            };
            if path.ends_with('/') {
                walk(&path, facts, client, seen);
                continue;
            }
            match at_with(&path, facts, client) {
                Some(Resource::Text(value)) => assert!(!value.ends_with('\n'), "{path}: {value:?}"),
                Some(_) => {}
                None => panic!("{path} is listed in {dir} but does not resolve"),
            }
        }
    }

    #[test]
    fn every_listed_entry_resolves() {
        let mut keyed = facts();
        keyed.public_keys = vec![PublicKey { name: "laptop".into(), openssh_key: "ssh-ed25519 AAAA".into() }];
        for (facts, client) in [(facts(), GUEST), (facts(), Client::default()), (keyed, GUEST)] {
            let mut seen = 0;
            walk("/", &facts, &client, &mut seen);
            // Versions × (top-level + meta-data + placement + dynamic entries) at least.
            assert!(seen >= VERSIONS.len() * 13, "only {seen} entries walked");
        }
    }
}
