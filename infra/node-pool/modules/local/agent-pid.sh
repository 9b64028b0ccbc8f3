# Sourced by start.sh and stop.sh. A pid file holds "<pid> <start time>": the start time
# (field 22 of /proc/<pid>/stat) tells the agent from a later process reusing its pid.

# pid_running PID: true while PID exists and is not a zombie (an exited agent whose
# parent, often an init that reaps lazily, has not collected it yet).
pid_running() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  [ "$(sed 's/^.*) //' "/proc/$1/stat" | cut -c1)" != "Z" ]
}

# pid_start PID: the start time of PID (empty without procfs).
pid_start() {
  if [ -r "/proc/$1/stat" ]; then sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f20; fi
}

# write_pid_file PID_FILE PID: record PID with its start time.
write_pid_file() {
  echo "$2 $(pid_start "$2")" >"$1"
}

# pid_of PID_FILE: the pid a pid file names (its first field).
pid_of() {
  sed -n '1s/[^0-9].*//p' "$1"
}

# agent_alive PID_FILE NODE_ID: true when the pid file names a running agent of NODE_ID.
# The start time and the command line are checked, so a recycled pid is never taken for it.
agent_alive() {
  [ -s "$1" ] || return 1
  _pid="" _start=""
  read -r _pid _start _rest <"$1" || [ -n "$_pid" ] || return 1
  case "$_pid" in '' | *[!0-9]*) return 1 ;; esac
  pid_running "$_pid" || return 1
  [ -r "/proc/$_pid/cmdline" ] || return 0 # no procfs: trust the pid
  [ -z "$_start" ] || [ "$(pid_start "$_pid")" = "$_start" ] || return 1
  tr '\000' ' ' <"/proc/$_pid/cmdline" | grep -q -F -- "--node-id $2 "
}
