#!/bin/sh
# Stop one node's agent (destroy-time provisioner): SIGTERM, wait, then SIGKILL.
set -eu

# shellcheck source=/dev/null
. "$(dirname "$0")/agent-pid.sh"

if agent_alive "$PID_FILE" "$NODE_ID"; then
  pid=$_pid # set by agent_alive
  kill -TERM "$pid" 2>/dev/null || true
  waited=0
  while pid_running "$pid" && [ "$waited" -lt 100 ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  if pid_running "$pid"; then
    echo "node $NODE_ID: agent $pid ignored SIGTERM for 10s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "node $NODE_ID: agent $pid stopped"
fi
# The machine is gone: a node re-created at this index is a new one.
rm -f "$PID_FILE" "$(dirname "$PID_FILE")/$NODE_ID.state.json"
