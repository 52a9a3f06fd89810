# Shared by the bash scripts beside it: `. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.
# Not run on its own. (scripts/stack-credentials stays standalone POSIX sh: the
# compose stack mounts that one file into a container.)
#
# Defines:
#   me          the sourcing script's name (log prefix)
#   repo        the clone's root
#   cache_root  ${CLAWKER_CACHE:-~/.cache/clawker-egress}: heavy downloads and
#               builds live outside the clone (CI runs a fresh clone)
#   log MSG     "<me>: MSG" on stderr (stdout is for results)
#   die MSG     log "error: MSG" and exit 1
#   usage N     print the script's header comment, lines 2..N
#   need_go     put /usr/local/go/bin on PATH when go is not there; die without Go
#   port_taken PORT          something listens on 127.0.0.1:PORT
#   pid_alive FILE           the process in pid FILE runs
#   stop_pid FILE TRIES STEP TERM it, wait up to TRIES x STEP s, then KILL; remove FILE
#   apt_install PKG...       apt-get update once per run, then install PKG...

me="$(basename "${BASH_SOURCE[1]:-$0}")"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${CLAWKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clawker-egress}"

log() { printf '%s: %s\n' "$me" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() { sed -n "2,${1}p" "$0"; }

need_go() {
  if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
    export PATH="$PATH:/usr/local/go/bin"
  fi
  command -v go >/dev/null 2>&1 || die "go not found (install Go >= 1.24 or put it on PATH)"
}

port_taken() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pid_alive() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

stop_pid() {
  local file=$1 tries=$2 step=$3 pid _
  if ! pid_alive "$file"; then
    log "not running"
    rm -f "$file"
    return 0
  fi
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 "$tries"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep "$step"
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
  log "stopped pid $pid"
}

apt_updated=0
apt_install() {
  log "installing $*"
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
