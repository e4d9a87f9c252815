//! The harness cleans up after runs that were killed (SIGKILL skips `Drop`):
//! a benchmark killed mid-run once left 11 pods' programs loaded, and the
//! next CI run's counts were off.

use std::process::Command;

use imds_tests::{
    imds::BPFFS_PREFIX,
    netns::{Netns, exclusive, require_root, run, sweep_leftovers},
};

fn netns_exists(name: &str) -> bool {
    run(Command::new("ip").args(["netns", "list"]))
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn is_bpffs_mount(path: &std::path::Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&path.to_str().unwrap()) && f.get(2) == Some(&"bpf")
    })
}

#[test]
fn leftovers_of_a_dead_run_are_swept_and_a_live_run_is_untouched() {
    require_root();
    let _serial = exclusive();
    // A pid that existed and is gone: a child that has been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    assert!(!std::path::Path::new("/proc").join(dead.to_string()).exists());

    let stale_ns = format!("imds-sweep-{dead}-0");
    run(Command::new("ip").args(["netns", "add", &stale_ns])).unwrap();
    let stale_mount =
        tempfile::Builder::new().prefix(&format!("{BPFFS_PREFIX}{dead}-")).tempdir().unwrap().keep();
    run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&stale_mount)).unwrap();
    // Ours, alive: must stay.
    let live_ns = Netns::new("sweep").unwrap();
    let live_mount = imds_tests::imds::Bpffs::mount().unwrap();
    // Someone else's namespace that merely looks similar: must stay.
    let foreign = format!("imds-other-{dead}");
    run(Command::new("ip").args(["netns", "add", &foreign])).unwrap();

    let removed = sweep_leftovers().unwrap();
    let kept_foreign = netns_exists(&foreign);
    let _ = run(Command::new("ip").args(["netns", "del", &foreign]));

    assert!(!netns_exists(&stale_ns), "stale namespace kept; removed: {removed:?}");
    assert!(!is_bpffs_mount(&stale_mount), "stale bpffs kept; removed: {removed:?}");
    assert!(!stale_mount.exists());
    assert!(netns_exists(live_ns.name()), "a live run's namespace was removed");
    assert!(is_bpffs_mount(live_mount.path()), "a live run's bpffs was unmounted");
    assert!(kept_foreign, "a namespace not named by the harness was removed");
    // Exactly the two stale ones of this test's dead pid; leftovers of other
    // dead runs (a CI run once had one) may be swept alongside.
    let ours: Vec<&String> = removed.iter().filter(|r| r.contains(&format!("-{dead}-"))).collect();
    assert_eq!(ours.len(), 2, "{removed:?}");
    assert!(
        !removed.iter().any(|r| r.contains(&format!("-{}-", std::process::id()))),
        "a live run's leftovers were reported removed: {removed:?}"
    );
}
