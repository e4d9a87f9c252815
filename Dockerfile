# The single kubevirt-imds image, one binary per role: the sidecar injected
# into virt-launcher pods, the node agent (DaemonSet) and the webhook
# (Deployment). No ENTRYPOINT: each workload names its binary as its
# command (deploy/base/, and the webhook for the sidecar it injects).
#
# The agent embeds the eBPF object, which needs the nightly toolchain and
# bpf-linker to build; build on the host first, then the image:
#
#   cargo xtask build --release     # the sidecar into target/sidecar/ (its own profile),
#                                   # the guest helper's static builds into target/guest-binaries/
#   docker build -t registry.example.com/kubevirt-imds:0.1.0 .
#
# distroless/cc: glibc and nothing else (no shell, no package manager). Its
# default user is nonroot; the sidecar runs as uid 107 and the agent as
# root, each set by its workload.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY target/sidecar/kubevirt-imds-sidecar target/release/kubevirt-imds-agent target/release/kubevirt-imds-webhook /usr/local/bin/
# The guest helper's static builds (kubevirt-imds-guest-linux-{amd64,arm64}):
# the sidecar serves them, with their SHA-256, at /v1/guest/ so that a VM
# installs the helper from the IMDS itself (deploy/guest/cloud-init.yaml).
COPY target/guest-binaries/ /usr/share/kubevirt-imds/guest/
