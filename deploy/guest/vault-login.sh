#!/bin/sh
# Log in to HashiCorp Vault with the VM's ServiceAccount token for the
# audience "vault" (VM annotation imds.kubevirt.io/token-audiences: vault).
# Works with the Kubernetes auth method (role with audience=vault) and the
# JWT auth method (role with bound_audiences=vault). Prints Vault's answer;
# its auth.client_token is the Vault token.
set -eu
IMDS=${IMDS:-http://169.254.169.254}
VAULT_ADDR=${VAULT_ADDR:?set VAULT_ADDR}
VAULT_ROLE=${VAULT_ROLE:?set VAULT_ROLE}
VAULT_AUTH_PATH=${VAULT_AUTH_PATH:-kubernetes}    # or jwt

token=$(curl -sSf -H 'Metadata: true' "$IMDS/v1/token?audience=vault" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
curl -sSf --request POST --header 'Content-Type: application/json' \
  --data "{\"role\":\"$VAULT_ROLE\",\"jwt\":\"$token\"}" \
  "$VAULT_ADDR/v1/auth/$VAULT_AUTH_PATH/login"
