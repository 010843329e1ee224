#!/usr/bin/env bash
# Serving certificate of the sluice coordinator (admission webhook and gRPC over TLS), for
# clusters without cert-manager.
#
# Makes a private CA and a server certificate for <service>.<namespace>.svc with openssl, stores
# them as the TLS Secret the coordinator mounts, sets the CA as the caBundle of the
# MutatingWebhookConfiguration, and publishes it as ConfigMap sluice-ca (key ca.crt) in every
# namespace labelled sluice.dev/injection=enabled, where the injected sidecars read it to
# verify the coordinator. Run it after `kubectl apply -k manifests/base`, again after labelling
# a new namespace, and before the certificate expires: the coordinator reloads the renewed
# Secret and the sidecars the renewed ConfigMap by themselves, no restart needed (the kubelet
# updates the mounted files within about a minute).
#
#   scripts/webhook-certs.sh                 # create or renew, then update the cluster
#   scripts/webhook-certs.sh --out DIR       # keep ca.crt, tls.crt, tls.key in DIR
#   scripts/webhook-certs.sh --no-kubectl --out DIR   # files only (no cluster needed)
#
# Options: --namespace (sluice), --service (sluice-coordinator), --secret
# (sluice-coordinator-webhook-tls), --webhook-config (sluice-gate-injector), --days (365),
# --ca-configmap (sluice-ca), --ca-namespaces "NS ..." (default: the labelled namespaces).
# Needs openssl (and kubectl unless --no-kubectl). The CA key never leaves the temporary
# directory unless --out is given; keep DIR private.
set -euo pipefail

NAMESPACE=sluice
SERVICE=sluice-coordinator
SECRET=sluice-coordinator-webhook-tls
WEBHOOK_CONFIG=sluice-gate-injector
CA_CONFIGMAP=sluice-ca
CA_NAMESPACES=
DAYS=365
OUT=
KUBECTL=1

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) NAMESPACE=$2; shift 2 ;;
    --service) SERVICE=$2; shift 2 ;;
    --secret) SECRET=$2; shift 2 ;;
    --webhook-config) WEBHOOK_CONFIG=$2; shift 2 ;;
    --ca-configmap) CA_CONFIGMAP=$2; shift 2 ;;
    --ca-namespaces) CA_NAMESPACES=$2; shift 2 ;;
    --days) DAYS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-kubectl) KUBECTL=; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option: $1" >&2; usage 2 >&2 ;;
  esac
done

command -v openssl >/dev/null || { echo "openssl is needed" >&2; exit 1; }
if [ -n "$KUBECTL" ]; then
  command -v kubectl >/dev/null || { echo "kubectl is needed (or pass --no-kubectl)" >&2; exit 1; }
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
umask 077
HOST="$SERVICE.$NAMESPACE.svc"

# CA: EC P-256, used for nothing but this webhook.
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key" 2>/dev/null
openssl req -x509 -new -key "$WORK/ca.key" -sha256 -days "$DAYS" \
  -subj "/CN=sluice-webhook-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$WORK/ca.crt" 2>/dev/null

# Server certificate with the names the API server and the sidecars use to reach the Service.
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/tls.ec.key" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$WORK/tls.ec.key" -out "$WORK/tls.key"
openssl req -new -key "$WORK/tls.key" -subj "/CN=$HOST" -out "$WORK/tls.csr" 2>/dev/null
cat > "$WORK/ext.cnf" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$HOST,DNS:$HOST.cluster.local,DNS:$SERVICE.$NAMESPACE,DNS:$SERVICE
EOF
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
  -CAcreateserial -sha256 -days "$DAYS" -extfile "$WORK/ext.cnf" -out "$WORK/tls.crt" 2>/dev/null
openssl verify -CAfile "$WORK/ca.crt" "$WORK/tls.crt" >/dev/null

if [ -n "$OUT" ]; then
  mkdir -p "$OUT"
  cp "$WORK/ca.crt" "$WORK/tls.crt" "$WORK/tls.key" "$OUT/"
  echo "wrote $OUT/ca.crt, $OUT/tls.crt, $OUT/tls.key (for $HOST, $DAYS days)"
fi

if [ -n "$KUBECTL" ]; then
  # Trust first, then serve: the caBundle gets the new CA *and* the CA in use until now, then
  # the Secret changes. The API server accepts the old certificate until the coordinator serves
  # the new one (kubelet sync + reload), so no admission call fails in between; the next
  # renewal drops the older CA.
  OLD_CA=$(kubectl get mutatingwebhookconfiguration "$WEBHOOK_CONFIG" \
    -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | base64 -d 2>/dev/null \
    | awk '{ print } /-----END CERTIFICATE-----/ { exit }' || true)
  cp "$WORK/ca.crt" "$WORK/bundle.crt"
  if [ -n "$OLD_CA" ]; then printf '%s\n' "$OLD_CA" >> "$WORK/bundle.crt"; fi
  CA_BUNDLE=$(base64 < "$WORK/bundle.crt" | tr -d '\n')
  kubectl patch mutatingwebhookconfiguration "$WEBHOOK_CONFIG" --type=json \
    -p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$CA_BUNDLE\"}]"
  # The sidecars get the same bundle (they read it again at every reconnect), also before the
  # Secret changes.
  if [ -z "$CA_NAMESPACES" ]; then
    CA_NAMESPACES=$(kubectl get namespaces -l sluice.dev/injection=enabled \
      -o jsonpath='{.items[*].metadata.name}')
  fi
  for ns in $CA_NAMESPACES; do
    kubectl -n "$ns" create configmap "$CA_CONFIGMAP" --from-file=ca.crt="$WORK/bundle.crt" \
      --dry-run=client -o yaml | kubectl apply -f -
  done
  if [ -z "$CA_NAMESPACES" ]; then
    echo "no namespace labelled sluice.dev/injection=enabled: no $CA_CONFIGMAP ConfigMap published" >&2
  fi
  # create-or-replace, so the same command renews.
  kubectl -n "$NAMESPACE" create secret tls "$SECRET" \
    --cert="$WORK/tls.crt" --key="$WORK/tls.key" --dry-run=client -o yaml | kubectl apply -f -
  echo "caBundle of $WEBHOOK_CONFIG, secret $NAMESPACE/$SECRET and configmap $CA_CONFIGMAP in [$CA_NAMESPACES] updated (for $HOST, $DAYS days)"
fi
