//! The OpenStack metadata service as cloud-init's OpenStack datasource reads
//! it: `/openstack` lists versions, it picks the newest it knows, then reads
//! `meta_data.json` (required), `user_data`, `vendor_data.json`,
//! `vendor_data2.json` and `network_data.json` (optional; a 404 is "absent").
//! It also reads the EC2-compatible tree at `/latest/meta-data/`, which
//! OpenStack serves too (see [`super::ec2`]).

use serde_json::json;

use super::{InstanceFacts, Missing, Resource, Segments, listing};

pub const PREFIX: &str = "openstack";

/// Nova's dated versions (nova/api/metadata/base.py), oldest first.
pub const VERSIONS: [&str; 9] = [
    "2012-08-10",
    "2013-04-04",
    "2013-10-17",
    "2015-10-15",
    "2016-06-30",
    "2016-10-06",
    "2017-02-22",
    "2018-08-27",
    "latest",
];

const FILES: [&str; 5] =
    ["meta_data.json", "user_data", "vendor_data.json", "vendor_data2.json", "network_data.json"];

pub fn resolve(path: &Segments, facts: &InstanceFacts) -> Option<Resource> {
    match path.parts.as_slice() {
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
        "availability_zone": "kubevirt",
        "meta": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str) -> Option<Resource> {
        resolve(&Segments::parse(path)?, &InstanceFacts::new("vm", "ns", Some("host")))
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
        assert_eq!(at("/openstack/2012-08-10/user_data"), Some(Resource::UserData(Missing::NotFound)));
        assert_eq!(at("/openstack/latest/vendor_data.json"), Some(Resource::VendorDataJson));
        assert_eq!(at("/openstack/latest/network_data.json"), Some(Resource::NetworkDataJson));
        for bad in [
            "/openstack/2099-01-01/meta_data.json",
            "/openstack/latest/../meta_data.json",
            "/openstack/latest/meta_data.json/",
            "/openstack/latest/password",
            "/openstack/latest/a/b",
        ] {
            assert_eq!(at(bad), None, "{bad}");
        }
    }
}
