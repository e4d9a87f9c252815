//! The OpenStack metadata service as cloud-init, cloudbase-init, Afterburn
//! and Ignition read it: `/openstack` lists versions, cloud-init picks the
//! newest it knows, then reads `meta_data.json` (required), `user_data`,
//! `vendor_data.json`, `vendor_data2.json` and `network_data.json`
//! (optional; a 404 is "absent"). It also reads the EC2-compatible tree at
//! `/latest/meta-data/`, which OpenStack serves too (see [`super::ec2`]).

use serde_json::json;

use super::{InstanceFacts, Missing, PublicKey, Resource, Segments, listing};

pub const PREFIX: &str = "openstack";

/// Nova's dated versions (nova/api/metadata/base.py), oldest first, except
/// [`PASSWORD_VERSION`]. cloud-init takes the newest it knows (2018-08-27
/// here), Afterburn reads 2012-08-10, cloudbase-init and Ignition `latest`:
/// none needs 2013-04-04.
pub const VERSIONS: [&str; 8] = [
    "2012-08-10",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "latest",
];

/// The version Nova introduced `password` with, deliberately not served.
/// cloudbase-init's HttpService (`_POST_PASSWORD_MD_VER`) GETs its
/// `meta_data.json` to decide whether the service stores passwords, and
/// reads a 404 as "no". This service stores none: if it answered that
/// version, cloudbase-init would go on to `GET`/`POST …/password`, where any
/// answer but a stored password fails the plugin, which then runs again on
/// every boot with a new random password.
pub const PASSWORD_VERSION: &str = "2013-04-04";

const FILES: [&str; 5] =
    ["meta_data.json", "user_data", "vendor_data.json", "vendor_data2.json", "network_data.json"];

pub fn resolve(path: &Segments, facts: &InstanceFacts) -> Option<Resource> {
    match path.parts.as_slice() {
        // Any version cloudbase-init might post to: the refusal says why.
        [PREFIX, version, "password"]
            if (VERSIONS.contains(version) || *version == PASSWORD_VERSION) && !path.trailing_slash =>
        {
            Some(Resource::PasswordNotStored)
        }
        [PREFIX] => Some(Resource::Text(listing(&VERSIONS))),
        [PREFIX, version] if VERSIONS.contains(version) => Some(Resource::Text(listing(&FILES))),
        [PREFIX, version, file] if VERSIONS.contains(version) && !path.trailing_slash => match *file {
            "meta_data.json" => Some(Resource::Json(meta_data(facts))),
            "user_data" => Some(Resource::UserData(Missing::NotFound)),
            "vendor_data.json" => Some(Resource::VendorDataJson),
            "vendor_data2.json" => Some(Resource::Json(json!({}))),
            "network_data.json" => Some(Resource::NetworkDataJson),
            _ => None,
        },
        _ => None,
    }
}

pub fn meta_data(facts: &InstanceFacts) -> serde_json::Value {
    json!({
        "uuid": facts.instance_id,
        "name": facts.vm_name,
        "hostname": facts.hostname,
        "launch_index": 0,
        "project_id": facts.namespace,
        "availability_zone": facts.availability_zone,
        "meta": {},
        // cloud-init reads `public_keys`, cloudbase-init both.
        "public_keys": public_keys_object(&facts.public_keys),
        "keys": keys_array(&facts.public_keys),
    })
}

/// `{"<name>": "<openssh key>"}`, as Nova writes `public_keys`.
fn public_keys_object(keys: &[PublicKey]) -> serde_json::Map<String, serde_json::Value> {
    keys.iter().map(|key| (key.name.clone(), json!(key.openssh_key))).collect()
}

/// `[{"name", "type": "ssh", "data"}]`, as Nova writes `keys`.
fn keys_array(keys: &[PublicKey]) -> Vec<serde_json::Value> {
    keys.iter().map(|key| json!({ "name": key.name, "type": "ssh", "data": key.openssh_key })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str) -> Option<Resource> {
        let facts = InstanceFacts::new("vm", "ns", Some("host")).with_placement("eu-1", "eu-1b");
        resolve(&Segments::parse(path)?, &facts)
    }

    #[test]
    fn versions_files_and_metadata() {
        let Some(Resource::Text(versions)) = at("/openstack") else { panic!() };
        assert!(versions.lines().any(|l| l == "2018-08-27") && versions.ends_with("latest"));
        assert_eq!(at("/openstack/"), at("/openstack"));
        assert!(matches!(at("/openstack/2018-08-27/"), Some(Resource::Text(_))));
        let Some(Resource::Json(md)) = at("/openstack/latest/meta_data.json") else { panic!() };
        assert_eq!(
            (md["uuid"].as_str(), md["name"].as_str(), md["hostname"].as_str()),
            (Some("vm.ns"), Some("vm"), Some("host"))
        );
        assert_eq!(md["availability_zone"], "eu-1b");
        assert_eq!((&md["public_keys"], &md["keys"]), (&json!({}), &json!([])));
        assert_eq!(at("/openstack/2012-08-10/user_data"), Some(Resource::UserData(Missing::NotFound)));
        assert_eq!(at("/openstack/latest/vendor_data.json"), Some(Resource::VendorDataJson));
        assert_eq!(at("/openstack/latest/network_data.json"), Some(Resource::NetworkDataJson));
        for bad in [
            "/openstack/2099-01-01/meta_data.json",
            "/openstack/2013-04-04/meta_data.json",
            "/openstack/2013-04-04/",
            "/openstack/latest/../meta_data.json",
            "/openstack/latest/meta_data.json/",
            "/openstack/latest/password/",
            "/openstack/latest/password/x",
            "/openstack/2099-01-01/password",
            "/openstack/latest/a/b",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }

    #[test]
    fn password_2013_04_04_is_refused_and_never_listed() {
        for path in
            ["/openstack/latest/password", "/openstack/2013-04-04/password", "/openstack/2018-08-27/password"]
        {
            assert_eq!(at(path), Some(Resource::PasswordNotStored), "{path}");
        }
        let Some(Resource::Text(versions)) = at("/openstack") else { panic!() };
        assert!(!versions.lines().any(|v| v == PASSWORD_VERSION), "{versions}");
        let Some(Resource::Text(files)) = at("/openstack/latest/") else { panic!() };
        assert!(!files.lines().any(|f| f == "password"), "{files}");
    }

    #[test]
    fn every_listed_entry_resolves() {
        let Some(Resource::Text(versions)) = at("/openstack") else { panic!() };
        for version in versions.lines() {
            let Some(Resource::Text(files)) = at(&format!("/openstack/{version}/")) else {
                panic!("{version}")
            };
            assert_eq!(files.lines().count(), FILES.len());
            for file in files.lines() {
                assert!(at(&format!("/openstack/{version}/{file}")).is_some(), "{version}/{file}");
            }
        }
    }

    #[test]
    fn keys_are_rendered_as_nova_does() {
        let mut facts = InstanceFacts::new("vm", "ns", None);
        facts.public_keys = vec![PublicKey { name: "laptop".into(), openssh_key: "ssh-ed25519 AAAA".into() }];
        let md = meta_data(&facts);
        assert_eq!(md["public_keys"], json!({"laptop": "ssh-ed25519 AAAA"}));
        assert_eq!(md["keys"], json!([{"name": "laptop", "type": "ssh", "data": "ssh-ed25519 AAAA"}]));
    }
}
