#!/bin/sh
# Tell XPlane that CI finished `terraform apply` for one region.
#
#   notify-xplane.sh --commit SHA --service SVC --region REGION --status succeeded|failed \
#                    [--run-url URL]
#
# Environment: XPLANE_WEBHOOK_URL (e.g. https://xplane.example.com/webhooks/terraform)
# and XPLANE_WEBHOOK_SECRET. The JSON body carries a unix timestamp (so a captured
# request cannot be replayed later) and is signed as
# `X-XPlane-Signature-256: sha256=<hex HMAC-SHA256(body)>`; `X-XPlane-Delivery` is one
# id for all retries of this call, so XPlane counts it once.
set -eu

die() {
  echo "notify-xplane: $*" >&2
  exit 2
}

commit="" service="" region="" status="" run_url=""
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || die "$1 needs a value"
  case "$1" in
    --commit) commit=$2 ;;
    --service) service=$2 ;;
    --region) region=$2 ;;
    --status) status=$2 ;;
    --run-url) run_url=$2 ;;
    *) die "unknown argument $1" ;;
  esac
  shift 2
done

[ -n "${XPLANE_WEBHOOK_URL:-}" ] || die "XPLANE_WEBHOOK_URL is not set"
[ -n "${XPLANE_WEBHOOK_SECRET:-}" ] || die "XPLANE_WEBHOOK_SECRET is not set"
case "$commit" in '' | *[!0-9a-f]*) die "--commit must be a hex commit sha, not '$commit'" ;; esac
case "$status" in succeeded | failed) ;; *) die "--status must be succeeded or failed" ;; esac
[ -n "$service" ] || die "--service is required"
[ -n "$region" ] || die "--region is required"

# A JSON string: backslashes and quotes escaped; control characters are refused.
json_string() {
  if printf '%s' "$1" | LC_ALL=C grep -q '[[:cntrl:]]'; then
    die "control character in '$1'"
  fi
  printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

body="{\"commit\":$(json_string "$commit"),\"service\":$(json_string "$service")"
body="$body,\"region\":$(json_string "$region"),\"status\":$(json_string "$status")"
if [ -n "$run_url" ]; then
  body="$body,\"run_url\":$(json_string "$run_url")"
fi
body="$body,\"timestamp\":$(date +%s)}"

# HMAC-SHA256 (RFC 2104) built from plain SHA-256: `openssl dgst -hmac KEY` would put
# the secret on a command line, which any user on the runner can read (ps,
# /proc/*/cmdline). Here the key only passes through the shell's own printf
# (a builtin) and pipes.
sha256_hex() { openssl dgst -sha256 -r | cut -d' ' -f1; }

# The key as hex bytes; longer than the 64-byte block: its SHA-256 instead.
key_hex=$(printf '%s' "$XPLANE_WEBHOOK_SECRET" | od -An -v -tx1 | tr -d ' \n')
if [ ${#key_hex} -gt 128 ]; then
  key_hex=$(printf '%s' "$XPLANE_WEBHOOK_SECRET" | sha256_hex)
fi
# The key padded to 64 bytes and XORed with 0x36 (ipad) and 0x5c (opad), as printf escapes.
ipad="" opad="" rest=$key_hex i=0
while [ $i -lt 64 ]; do
  byte=0
  if [ -n "$rest" ]; then
    byte=$((0x${rest%"${rest#??}"}))
    rest=${rest#??}
  fi
  ipad="$ipad\\$(printf '%03o' $((byte ^ 54)))"
  opad="$opad\\$(printf '%03o' $((byte ^ 92)))"
  i=$((i + 1))
done
# shellcheck disable=SC2059 # the pads are printf escapes on purpose
signature=$(
  {
    printf "$opad"
    { printf "$ipad" && printf '%s' "$body"; } | openssl dgst -sha256 -binary
  } | sha256_hex
)
delivery="$region-$(printf '%s' "$commit" | cut -c1-12)-$(openssl rand -hex 8)"

# --fail-with-body: a refusal (401, 422) prints XPlane's reason and fails the job.
curl --silent --show-error --fail-with-body \
  --retry 3 --retry-delay 1 --retry-connrefused --max-time 30 \
  -X POST "$XPLANE_WEBHOOK_URL" \
  -H "Content-Type: application/json" \
  -H "X-XPlane-Signature-256: sha256=$signature" \
  -H "X-XPlane-Delivery: $delivery" \
  --data-binary "$body"
echo
echo "notify-xplane: $status for $region at $commit delivered ($delivery)"
