# The single kubevirt-imds image: the webhook and the sidecar it injects.
#
# The binary embeds its eBPF object, which needs the nightly toolchain and
# bpf-linker to build; build it on the host first, then the image:
#
#   cargo xtask build --release
#   docker build -t registry.example.com/kubevirt-imds:0.1.0 .
#
# distroless/cc: glibc and nothing else (no shell, no package manager).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY target/release/kubevirt-imds /usr/local/bin/kubevirt-imds
# The webhook runs as the image's nonroot user; the injected sidecar runs as
# root with only NET_ADMIN, BPF and NET_BIND_SERVICE (set by the webhook).
ENTRYPOINT ["/usr/local/bin/kubevirt-imds"]
