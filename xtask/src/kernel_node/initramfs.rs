//! The node's initramfs: busybox and just the modules that mount the
//! host's file system (virtio, 9p, overlay). Its init mounts the host's `/`
//! read-only over 9p with a tmpfs overlay on top, the job directory
//! read-write, and switches to the job's init there.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, ensure};

use super::{kernels::Prepared, node::Tag};

/// Bump when the initramfs changes, to rebuild cached ones.
const FORMAT: u32 = 1;

/// What the init loads, in this order (each after its dependencies).
const MODULES: [&str; 4] = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

fn init_script() -> String {
    let mount_9p = "mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000";
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
fail() {{ echo "node init: $*"; echo o > /proc/sysrq-trigger; sleep 10; }}
for m in $(cat /modules/order); do insmod /modules/$m || fail "insmod $m"; done
mkdir -p /lower /rw /newroot
{mount_9p},ro,cache=loose {host} /lower || fail "mounting the host's /"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay"
release=$(uname -r)
if [ ! -f /newroot/lib/modules/$release/modules.dep ]; then
  mkdir -p /newroot/lib/modules/$release
  {mount_9p},ro,cache=loose {modules} /newroot/lib/modules/$release || fail "mounting the modules"
fi
mkdir -p /newroot/{job_dir}
{mount_9p},cache=none {job} /newroot/{job_dir} || fail "mounting the job"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/sh /{job_dir}/node-init.sh
"#,
        host = Tag::Host.name(),
        modules = Tag::Modules.name(),
        job = Tag::Job.name(),
        job_dir = super::node::JOB_DIR,
    )
}

/// The initramfs for `kernel`, built once into `cache`.
pub fn build(kernel: &Prepared, cache: &Path) -> anyhow::Result<PathBuf> {
    let out = cache.join(format!("node-initramfs-{}-v{FORMAT}.cpio.gz", kernel.release));
    if out.is_file() {
        return Ok(out);
    }
    let staging = tempfile::tempdir()?;
    let root = staging.path();
    for dir in ["bin", "proc", "sys", "dev", "modules"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying busybox (busybox-static)")?;
    let dep = std::fs::read_to_string(kernel.modules_dir().join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", kernel.modules_dir().display()))?;
    let order = load_order(&parse_modules_dep(&dep), &MODULES)?;
    for path in &order {
        let src = kernel.modules_dir().join(path);
        let name = src.file_name().context("module file name")?;
        std::fs::copy(&src, root.join("modules").join(name))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    let names: Vec<String> =
        order.iter().filter_map(|p| Path::new(p).file_name()?.to_str().map(str::to_owned)).collect();
    std::fs::write(root.join("modules/order"), names.join("\n"))?;
    write_executable(&root.join("init"), &init_script())?;
    let packed = imds_tests::vm::pack(root)?;
    std::fs::create_dir_all(cache)?;
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, packed)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// `modules.dep`: module path → its dependencies' paths.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            Some((module.trim().to_owned(), deps.split_whitespace().map(str::to_owned).collect()))
        })
        .collect()
}

/// The module files to load for `wanted` (names without `.ko`), every
/// dependency before what needs it, each once. Modules built into the
/// kernel are not in `modules.dep` and need nothing.
fn load_order(dep: &BTreeMap<String, Vec<String>>, wanted: &[&str]) -> anyhow::Result<Vec<String>> {
    fn visit(
        path: &str,
        dep: &BTreeMap<String, Vec<String>>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        ensure!(depth < 64, "modules.dep has a dependency cycle at {path}");
        if order.iter().any(|p| p == path) {
            return Ok(());
        }
        // modules.dep lists the deepest dependency last.
        for d in dep.get(path).into_iter().flatten().rev() {
            visit(d, dep, order, depth + 1)?;
        }
        order.push(path.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        let stem = |p: &str| {
            Path::new(p)
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| f.split(".ko").next())
                .map(str::to_owned)
        };
        if let Some(path) = dep.keys().find(|p| stem(p).as_deref() == Some(*name)) {
            visit(path, dep, &mut order, 0)?;
        }
    }
    ensure!(!order.is_empty(), "none of the modules {wanted:?} is in modules.dep");
    Ok(order)
}

fn write_executable(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/fs/overlayfs/overlay.ko:
";

    #[test]
    fn dependencies_load_first_and_once() {
        let order = load_order(&parse_modules_dep(DEP), &["9pnet_virtio", "9p", "overlay"]).unwrap();
        let pos = |m: &str| order.iter().position(|p| p.ends_with(&format!("/{m}.ko"))).unwrap();
        assert_eq!(order.len(), 8, "{order:?}");
        assert!(pos("virtio_ring") < pos("virtio") && pos("virtio") < pos("9pnet_virtio"));
        assert!(pos("9pnet") < pos("9pnet_virtio") && pos("9pnet") < pos("9p"));
        assert!(pos("netfs") < pos("fscache") && pos("fscache") < pos("9p"));
    }

    #[test]
    fn built_in_modules_are_skipped_but_none_at_all_is_an_error() {
        let order = load_order(&parse_modules_dep(DEP), &["virtio_pci", "overlay"]).unwrap();
        assert_eq!(order, vec!["kernel/fs/overlayfs/overlay.ko"]);
        assert!(load_order(&parse_modules_dep(DEP), &["nothing"]).is_err());
    }
}
