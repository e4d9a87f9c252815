#!/bin/sh
# AWS STS AssumeRoleWithWebIdentity from a Linux guest, with nothing
# configured in the guest: the role and the audience come from the IMDS
# (the webhook read them from the VM's ServiceAccount annotation
# eks.amazonaws.com/role-arn), the token too. Prints STS's XML answer, whose
# Credentials (AccessKeyId, SecretAccessKey, SessionToken) are the role's.
set -eu
IMDS=${IMDS:-http://169.254.169.254}
STS_ENDPOINT=${STS_ENDPOINT:-https://sts.amazonaws.com/}

field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

aws=$(curl -sSf -H 'Metadata: true' "$IMDS/v1/aws")
role=$(printf '%s' "$aws" | field roleArn)
audience=$(printf '%s' "$aws" | field audience)
token=$(curl -sSf -H 'Metadata: true' --get --data-urlencode "audience=$audience" "$IMDS/v1/token" | field token)

curl -sSf "$STS_ENDPOINT" \
  --data-urlencode Action=AssumeRoleWithWebIdentity \
  --data-urlencode Version=2011-06-15 \
  --data-urlencode "RoleArn=$role" \
  --data-urlencode "RoleSessionName=${ROLE_SESSION_NAME:-$(hostname)}" \
  --data-urlencode "WebIdentityToken=$token"
