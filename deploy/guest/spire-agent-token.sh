#!/bin/sh
# For a SPIRE agent in the guest using the k8s_psat node attestor: keep its
# projected-token file fresh with the VM's token for the audience
# "spire-server" (VM annotation imds.kubevirt.io/token-audiences:
# spire-server); point the attestor's token_path at the file. Run it from
# cron or a systemd timer: the token expires.
set -eu
IMDS=${IMDS:-http://169.254.169.254}
TOKEN_FILE=${TOKEN_FILE:-/var/run/secrets/tokens/spire-agent}
AUDIENCE=${AUDIENCE:-spire-server}

mkdir -p "$(dirname "$TOKEN_FILE")"
curl -sSf -H 'Metadata: true' --get --data-urlencode "audience=$AUDIENCE" "$IMDS/v1/token" \
  | sed -n 's/.*"token":"\([^"]*\)".*/\1/p' > "$TOKEN_FILE.tmp"
test -s "$TOKEN_FILE.tmp"
mv "$TOKEN_FILE.tmp" "$TOKEN_FILE"
