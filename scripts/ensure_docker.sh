#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#
# 1. install Debian's docker.io when `dockerd` is missing (needs root + apt);
# 2. start dockerd in the background when the socket does not answer;
# 3. wait for it (DOCKER_WAIT_S, default 60 s) and say plainly what failed.
#
# With DOCKER_HOST set to a remote daemon (tcp://, ssh://) only step 3 runs:
# we cannot start someone else's engine.
set -uo pipefail

WAIT_S="${DOCKER_WAIT_S:-60}"
LOG="${DOCKERD_LOG:-/var/log/swe-aem-dockerd.log}"

fail() { echo "ensure_docker: ERROR: $*" >&2; exit 1; }
say() { echo "ensure_docker: $*"; }

answering() { docker info >/dev/null 2>&1; }

wait_for_engine() {
  local deadline=$((SECONDS + WAIT_S))
  until answering; do
    if ((SECONDS >= deadline)); then return 1; fi
    sleep 1
  done
}

if answering; then
  say "engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi

if [[ -n "${DOCKER_HOST:-}" && "${DOCKER_HOST}" != unix://* ]]; then
  wait_for_engine && { say "remote engine ${DOCKER_HOST} answers"; exit 0; }
  fail "remote engine DOCKER_HOST=${DOCKER_HOST} does not answer after ${WAIT_S}s; start it there"
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] || fail "dockerd is not installed and we are not root; run: sudo apt-get install docker.io"
  command -v apt-get >/dev/null 2>&1 || fail "dockerd is not installed and apt-get is missing (not Debian?)"
  say "installing Debian docker.io"
  export DEBIAN_FRONTEND=noninteractive
  # apt.sh: waits for another process's dpkg lock, retries downloads and the command
  apt_retry() { bash "$(dirname "$0")/apt.sh" "$@"; }
  apt_retry update -qq || fail "apt-get update failed (no network to the Debian mirror?)"
  apt_retry install -y -qq --no-install-recommends docker.io iptables ca-certificates >/dev/null \
    || fail "apt-get install docker.io failed"
fi

if pgrep -x dockerd >/dev/null 2>&1; then
  say "dockerd is running but not answering yet; waiting up to ${WAIT_S}s"
else
  [[ $(id -u) -eq 0 ]] || fail "dockerd is not running and only root can start it here"
  say "starting dockerd (log: ${LOG})"
  mkdir -p "$(dirname "$LOG")"
  # setsid: the daemon outlives this script and the shell that ran it.
  setsid nohup dockerd >"$LOG" 2>&1 </dev/null &
fi

if wait_for_engine; then
  say "engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
  exit 0
fi
echo "---- last lines of ${LOG} ----" >&2
tail -n 20 "$LOG" >&2 2>/dev/null || true
fail "dockerd did not answer on ${DOCKER_HOST:-unix:///var/run/docker.sock} within ${WAIT_S}s"
