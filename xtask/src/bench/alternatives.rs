//! The other ways of serving a VM's metadata requests, set up in the same
//! pod beside our data path, each in front of the same server (the
//! sidecar's API without its data path, `kubevirt-imds-sidecar serve`) or,
//! for a ceiling, nginx answering the same bytes. They use neighbouring
//! link-local addresses: 169.254.169.254 itself belongs to our path, and
//! neither DNAT nor a veth costs more or less for the address it serves.
//! Each server starts on the server CPU of the [`Placement`] when there is
//! one, and is checked to run there.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::Context as _;
use imds_common::contract::IMDS_IP;
use imds_tests::{
    netns::{Background, Netns},
    topology::{BRIDGE, PodLayout},
};

use super::{
    Context as Bench, ID_ARGS,
    http::Way,
    pinning::{self, Placement},
    wait_for,
};

pub const DNAT_ADDR: &str = "169.254.169.253";
pub const VETH_ADDR: &str = "169.254.169.252";
/// The pod's address on the bridge in the masquerade layout (the guest's gateway).
const POD_BRIDGE_IP: &str = "10.0.2.1";
/// The veth's ends carry the agent's own prefix (`imds-`), which its plan
/// leaves alone: any other name would get `imds_to_uplink` on its egress,
/// a cost the veth way does not have outside a plumbed pod.
const VETH_IF: &str = "imds-alt";
const VETH_BRIDGE_PORT: &str = "imds-alt-br";

/// The alternatives' servers (alive as long as this) and where to reach each.
pub struct Alternatives {
    pub ways: Vec<(Way, String)>,
    _servers: Vec<Background>,
}

pub fn set_up(layout: &PodLayout, bench: &Bench, placement: &Placement) -> anyhow::Result<Alternatives> {
    let (pod, guest) = (&layout.pod, layout.guest());
    let cpu = placement.server();
    let (binary, token_dir) = (&bench.binaries.sidecar, bench.volume.dir());
    let mut servers = Vec::new();
    let mut ways = Vec::new();

    // nftables DNAT to the same server on the pod's address, as kube2iam,
    // kiam and aad-pod-identity do with iptables.
    let dnat_target = format!("{POD_BRIDGE_IP}:8080");
    servers.push(serve(pod, binary, &dnat_target, token_dir, cpu)?);
    pod.sh(&format!(
        "nft -f - <<'EOF'\ntable ip imdsbench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
         ip daddr {DNAT_ADDR} tcp dport 80 dnat to {dnat_target}\n }}\n}}\nEOF"
    ))?;
    ways.push((Way::Dnat, format!("http://{DNAT_ADDR}")));

    // The address on a veth plugged into the bridge, no eBPF (the seeds'
    // design): the guest reaches it by ARP on its own segment.
    pod.ip(&format!("link add {VETH_IF} type veth peer name {VETH_BRIDGE_PORT}"))?;
    pod.ip(&format!("link set {VETH_BRIDGE_PORT} master {BRIDGE} up"))?;
    pod.ip(&format!("addr add {VETH_ADDR}/32 dev {VETH_IF}"))?;
    pod.ip(&format!("link set {VETH_IF} up"))?;
    guest.ip(&format!("route add {VETH_ADDR}/32 dev eth0"))?;
    servers.push(serve(pod, binary, &format!("{VETH_ADDR}:80"), token_dir, cpu)?);
    ways.push((Way::Veth, format!("http://{VETH_ADDR}")));

    // nginx returning the very bodies our server sends, from the pod.
    let bodies = ["/v1/token", "/v1/identity"]
        .into_iter()
        .map(|p| {
            Ok((
                p,
                guest.sh(&format!(
                    "curl -sf -H 'Metadata: true' -H 'Host: {IMDS_IP}' http://{DNAT_ADDR}{p}"
                ))?,
            ))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let nginx_listen = format!("{POD_BRIDGE_IP}:8081");
    servers.push(nginx(pod, &nginx_listen, &bodies, bench.scratch.path(), cpu)?);
    ways.push((Way::Nginx, format!("http://{nginx_listen}")));

    Ok(Alternatives { ways, _servers: servers })
}

/// `kubevirt-imds-sidecar serve` (the same API and limits, no data path) in
/// `ns`, on `cpu` alone when there is one.
pub(super) fn serve(
    ns: &Netns,
    binary: &Path,
    listen: &str,
    token_dir: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<Background> {
    let server = pinning::spawn_on(
        ns,
        cpu,
        binary.to_str().context("binary path")?,
        &[
            &["serve", "--listen", listen][..],
            &ID_ARGS,
            &["--token-dir", token_dir.to_str().context("token dir")?],
        ]
        .concat(),
    )?;
    wait_listening(ns, listen)?;
    if let Some(cpu) = cpu {
        pinning::check_listener(ns, listen, cpu)?;
    }
    Ok(server)
}

/// nginx, `return 200` of each body: on `cpu` with one worker when there is
/// one, else a worker per CPU ([`pinning::nginx_workers`]).
fn nginx(
    ns: &Netns,
    listen: &str,
    bodies: &BTreeMap<&str, String>,
    dir: &Path,
    cpu: Option<usize>,
) -> anyhow::Result<Background> {
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    // /healthz: what wait_listening polls.
    let mut locations = String::from("    location = /healthz { return 200 \"ok\"; }\n");
    for (path, body) in bodies {
        // nginx's `return` takes a quoted string: escape quotes and backslashes.
        let escaped = body.replace('\\', "\\\\").replace('"', "\\\"");
        writeln!(
            locations,
            "    location = {path} {{ default_type application/json; return 200 \"{escaped}\"; }}"
        )?;
    }
    let config = format!(
        "{workers}daemon off;\npid {p}/nginx.pid;\nerror_log stderr warn;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  \
         client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  fastcgi_temp_path {p}/fastcgi;\n  \
         uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n  server {{\n    listen {listen};\n{locations}  }}\n}}\n",
        workers = pinning::nginx_workers(cpu),
        p = prefix.display()
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, config)?;
    let server = pinning::spawn_on(
        ns,
        cpu,
        "nginx",
        &["-p", prefix.to_str().context("path")?, "-c", conf.to_str().context("path")?],
    )?;
    wait_listening(ns, listen)?;
    if let Some(cpu) = cpu {
        // The master and its worker both hold the listening socket.
        pinning::check_listener(ns, listen, cpu)?;
    }
    Ok(server)
}

fn wait_listening(ns: &Netns, addr: &str) -> anyhow::Result<()> {
    wait_for(|| ns.sh(&format!("curl -s -m 1 -o /dev/null http://{addr}/healthz")).is_ok(), addr)
}
