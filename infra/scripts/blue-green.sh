#!/usr/bin/env bash
# Blue-green release of a containerd workload with nerdctl.
#
#   blue-green.sh IMAGE
#
# Two slots, blue and green, each a container published on its own loopback port.
# The new image starts in the idle slot, must pass its health check, then traffic is
# switched to it (SWITCH_HOOK, e.g. a proxy reload) and the old slot is stopped.
# A release that fails its health check is removed; the live slot never stops.
#
# Environment (defaults in brackets):
#   APP               container name prefix [app]
#   BLUE_PORT         host port of the blue slot [8081]
#   GREEN_PORT        host port of the green slot [8082]
#   CONTAINER_PORT    port the workload listens on inside the container [8080]
#   HEALTH_PATH       health check path [/healthz]
#   HEALTH_TIMEOUT    seconds the new slot has to become healthy [60]
#   DRAIN_SECONDS     wait between switching and stopping the old slot [10]
#   STATE_DIR         where the active slot is recorded [/var/lib/xplane/blue-green]
#   SWITCH_HOOK       command run as `SWITCH_HOOK PORT SLOT` to move traffic [none]
#   NERDCTL           nerdctl executable [nerdctl]
set -euo pipefail

die() {
  echo "blue-green: $*" >&2
  exit 1
}

[[ $# -eq 1 && -n $1 ]] || die "usage: blue-green.sh IMAGE"
image=$1
app=${APP:-app}
blue_port=${BLUE_PORT:-8081}
green_port=${GREEN_PORT:-8082}
container_port=${CONTAINER_PORT:-8080}
health_path=${HEALTH_PATH:-/healthz}
health_timeout=${HEALTH_TIMEOUT:-60}
drain_seconds=${DRAIN_SECONDS:-10}
state_dir=${STATE_DIR:-/var/lib/xplane/blue-green}
nerdctl=${NERDCTL:-nerdctl}
active_file="$state_dir/$app.active"

port_of() {
  if [[ $1 == blue ]]; then echo "$blue_port"; else echo "$green_port"; fi
}

healthy() {
  curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$1$health_path"
}

mkdir -p "$state_dir"
live=$(cat "$active_file" 2>/dev/null || true)
case "$live" in
  blue) next=green ;;
  green | "") next=blue ;;
  *) die "$active_file holds ${live@Q}, expected blue or green" ;;
esac
next_port=$(port_of "$next")
next_name="$app-$next"

echo "blue-green: live slot ${live:-none}, releasing $image to $next (port $next_port)"
"$nerdctl" pull "$image"
"$nerdctl" rm -f "$next_name" >/dev/null 2>&1 || true # a leftover of a failed release
"$nerdctl" run -d --name "$next_name" --restart unless-stopped \
  -p "127.0.0.1:$next_port:$container_port" "$image" >/dev/null

deadline=$((SECONDS + health_timeout))
until healthy "$next_port"; do
  if ((SECONDS >= deadline)); then
    "$nerdctl" logs --tail 50 "$next_name" >&2 || true
    "$nerdctl" rm -f "$next_name" >/dev/null || true
    die "$next_name not healthy on :$next_port$health_path after ${health_timeout}s; kept ${live:-none}"
  fi
  sleep 1
done

if [[ -n ${SWITCH_HOOK:-} ]]; then
  # Word splitting of SWITCH_HOOK is wanted: it may carry arguments.
  # shellcheck disable=SC2086
  $SWITCH_HOOK "$next_port" "$next"
fi
printf '%s\n' "$next" >"$active_file.tmp"
mv "$active_file.tmp" "$active_file"
echo "blue-green: traffic on $next"

if [[ -n $live ]]; then
  sleep "$drain_seconds" # in-flight requests of the old slot finish
  "$nerdctl" stop "$app-$live" >/dev/null || true
  "$nerdctl" rm -f "$app-$live" >/dev/null || true
  echo "blue-green: stopped $live"
fi
