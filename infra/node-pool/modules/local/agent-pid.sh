# Sourced by start.sh and stop.sh.

# pid_running PID: true while PID exists and is not a zombie (an exited agent whose
# parent, often an init that reaps lazily, has not collected it yet).
pid_running() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  [ "$(sed 's/^.*) //' "/proc/$1/stat" | cut -c1)" != "Z" ]
}

# agent_alive PID_FILE NODE_ID: true when the pid file names a running agent of NODE_ID.
# The command line is checked so a recycled pid (after a reboot) is never taken for it.
agent_alive() {
  [ -s "$1" ] || return 1
  _pid=$(cat "$1")
  case "$_pid" in '' | *[!0-9]*) return 1 ;; esac
  pid_running "$_pid" || return 1
  [ -r "/proc/$_pid/cmdline" ] || return 0 # no procfs: trust the pid
  tr '\000' ' ' <"/proc/$_pid/cmdline" | grep -q -F -- "--node-id $2 "
}
