//! Whatever a VM's owner writes in `imds.kubevirt.io/*` labels and
//! annotations (one `key=value` per line), through the settings parser, the
//! warnings and the opt-in check; and whatever an SSH key Secret holds
//! (files separated by NUL bytes), through the key filter. Checked: no
//! panic, a parse error names its annotation, and a served key is one line
//! under a name EC2's `N=name` listing can carry.
#![no_main]

use std::collections::BTreeMap;

use imds_sidecar::cloud::ssh_keys;
use imds_webhook::{annotations, firmware_uuid, ssh_keys as key_secrets};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let map: BTreeMap<String, String> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    match annotations::settings(&map) {
        Ok(settings) => assert!((1..=64).contains(&settings.hop_limit)),
        Err(e) => assert!(e.to_string().contains(e.annotation), "{e}"),
    }
    let _ = annotations::warnings(&map);
    let _ = annotations::label_warning(&map);
    let _ = annotations::opted_in(&map, &map);
    for value in map.values() {
        let _ = key_secrets::parse(value);
        let _ = firmware_uuid::normalise(value);
    }

    let files: Vec<(String, String)> =
        text.split('\0').enumerate().map(|(i, contents)| (format!("key{i}"), contents.to_owned())).collect();
    for key in ssh_keys::name_keys(&files) {
        assert!(!key.openssh_key.contains('\n') && ssh_keys::is_public_key(&key.openssh_key));
        assert!(!key.name.is_empty() && !key.name.contains(['=', '\n']), "{:?}", key.name);
    }
});
