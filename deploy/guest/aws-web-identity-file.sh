#!/bin/sh
# For the AWS CLI and SDKs: keep a web identity token file fresh and print
# the two variables they read (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE);
# they then call AssumeRoleWithWebIdentity themselves. Run it from cron or
# a systemd timer every few minutes: the token expires.
set -eu
IMDS=${IMDS:-http://169.254.169.254}
TOKEN_FILE=${TOKEN_FILE:-/run/aws/web-identity-token}

field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

aws=$(curl -sSf -H 'Metadata: true' "$IMDS/v1/aws")
audience=$(printf '%s' "$aws" | field audience)
mkdir -p "$(dirname "$TOKEN_FILE")"
curl -sSf -H 'Metadata: true' --get --data-urlencode "audience=$audience" "$IMDS/v1/token" \
  | field token > "$TOKEN_FILE.tmp"
test -s "$TOKEN_FILE.tmp"
mv "$TOKEN_FILE.tmp" "$TOKEN_FILE"     # atomic: readers never see half a token
echo "export AWS_ROLE_ARN=$(printf '%s' "$aws" | field roleArn)"
echo "export AWS_WEB_IDENTITY_TOKEN_FILE=$TOKEN_FILE"
