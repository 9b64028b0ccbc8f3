#!/bin/sh
# Start one node's `xplane agent` in the background (create-time provisioner).
# Idempotent: a live agent of this node (its pid file names it) is left alone.
set -eu

# shellcheck source=/dev/null
. "$(dirname "$0")/agent-pid.sh"

mkdir -p "$STATE_DIR"
if agent_alive "$PID_FILE" "$NODE_ID"; then
  echo "node $NODE_ID: agent already running (pid $(pid_of "$PID_FILE"))"
  exit 0
fi
if [ ! -r "$TOKEN_FILE" ]; then
  echo "node $NODE_ID: token file $TOKEN_FILE is not readable" >&2
  exit 1
fi

log="$STATE_DIR/$NODE_ID.log"
touch "$log"
offset=$(($(wc -c <"$log") + 1)) # this start's lines begin here (the log is appended)
# The region's local metrics file: `xplane demo load REGION` writes {"cpu": ...} here.
# Until it does, the agents report CPU_DEFAULT, never this machine's CPU: a busy laptop
# must not make the autoscaler grow the local pools on its own.
metrics="$STATE_DIR/$REGION.metrics.json"
[ -e "$metrics" ] || echo '{}' >"$metrics"
# stdin/stdout/stderr detached from terraform's pipes, or terraform would wait for them;
# setsid: its own session, so it outlives terraform and the CI job's process group.
nohup setsid "$AGENT_COMMAND" agent \
  --server "$API_URL" \
  --service "$SERVICE" \
  --region "$REGION" \
  --token-file "$TOKEN_FILE" \
  --address "$ADDRESS" \
  --serve-health "$ADDRESS:$HEALTH_PORT" \
  --node-id "$NODE_ID" \
  --state-file "$STATE_DIR/$NODE_ID.state.json" \
  --metrics-file "$metrics" \
  --cpu-default "${CPU_DEFAULT:-0.3}" \
  </dev/null >>"$log" 2>&1 &
write_pid_file "$PID_FILE" "$!"

# A bad flag or a busy health port kills the agent within its first second or two:
# wait until it serves /healthz (or exits), so the apply fails now, not silently later.
waited=0
until tail -c "+$offset" "$log" | grep -q '"serving health"'; do
  if ! agent_alive "$PID_FILE" "$NODE_ID"; then
    echo "node $NODE_ID: agent exited at start; last lines of $log:" >&2
    tail -c "+$offset" "$log" | tail -n 20 >&2
    rm -f "$PID_FILE"
    exit 1
  fi
  if [ "$waited" -ge "${START_TIMEOUT_TENTHS:-300}" ]; then
    echo "node $NODE_ID: agent not serving health after $((waited / 10))s; stopped. See $log" >&2
    kill "$(pid_of "$PID_FILE")" 2>/dev/null || true
    rm -f "$PID_FILE"
    exit 1
  fi
  sleep 0.1
  waited=$((waited + 1))
done
echo "node $NODE_ID: agent started at $ADDRESS (pid $(pid_of "$PID_FILE"))"
