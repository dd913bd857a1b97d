#!/usr/bin/env bash
# Make sure a container registry answers on 127.0.0.1:5000 (Debian's `docker-registry`,
# distribution 2.8). Tests push official-looking image names to it and pull them back
# through swe-aem's own pull code; Docker trusts registries on 127.0.0.0/8 without TLS.
#
# 1. install the package with apt when the binary is missing (waiting for the dpkg lock, retrying);
# 2. start it with its own config and storage folder (REGISTRY_DIR) when nothing answers;
# 3. wait for /v2/ (REGISTRY_WAIT_S, default 30 s) and say plainly what failed.
# It listens on loopback only: never reachable from another machine.
set -uo pipefail

ADDR="${REGISTRY_ADDR:-127.0.0.1:5000}"
DIR="${REGISTRY_DIR:-/var/lib/swe-aem-registry}"
WAIT_S="${REGISTRY_WAIT_S:-30}"
LOG="$DIR/registry.log"

fail() { echo "ensure_registry: ERROR: $*" >&2; exit 1; }
say() { echo "ensure_registry: $*"; }

answering() { curl -fsS -m 3 "http://$ADDR/v2/" >/dev/null 2>&1; }

case "$ADDR" in
  127.*|localhost:*) ;;
  *) fail "REGISTRY_ADDR=$ADDR is not a loopback address; this script only serves on loopback" ;;
esac

if answering; then
  say "registry answers on $ADDR"
  exit 0
fi

# apt.sh: waits for another process's dpkg lock, retries downloads and the command
apt_retry() { bash "$(dirname "$0")/apt.sh" "$@"; }

if ! command -v docker-registry >/dev/null 2>&1; then
  [[ $(id -u) -eq 0 ]] || fail "docker-registry is not installed and we are not root; run: sudo apt-get install docker-registry"
  command -v apt-get >/dev/null 2>&1 || fail "docker-registry is missing and apt-get is missing (not Debian?)"
  say "installing Debian docker-registry"
  export DEBIAN_FRONTEND=noninteractive
  apt_retry update -qq || fail "apt-get update failed (no network to the Debian mirror?)"
  # policy-rc.d 101: the package must not start its own service (it would listen on every interface)
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d.swe-aem && chmod +x /usr/sbin/policy-rc.d.swe-aem
  had_policy=0; [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
  [[ $had_policy -eq 1 ]] || cp /usr/sbin/policy-rc.d.swe-aem /usr/sbin/policy-rc.d
  apt_retry install -y -qq --no-install-recommends docker-registry curl >/dev/null
  rc=$?
  [[ $had_policy -eq 1 ]] || rm -f /usr/sbin/policy-rc.d
  rm -f /usr/sbin/policy-rc.d.swe-aem
  [[ $rc -eq 0 ]] || fail "apt-get install docker-registry failed"
fi
command -v curl >/dev/null 2>&1 || fail "curl is missing (apt-get install curl)"

mkdir -p "$DIR/data"
cat >"$DIR/config.yml" <<EOF
# written by scripts/ensure_registry.sh: swe-aem's loopback-only test registry
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $DIR/data
  delete:
    enabled: true
http:
  addr: $ADDR
EOF

if [[ -f "$DIR/registry.pid" ]] && kill -0 "$(cat "$DIR/registry.pid")" 2>/dev/null; then
  say "registry process $(cat "$DIR/registry.pid") is running but not answering yet; waiting"
else
  say "starting docker-registry on $ADDR (storage $DIR/data, log $LOG)"
  setsid nohup docker-registry serve "$DIR/config.yml" >"$LOG" 2>&1 </dev/null &
  echo $! >"$DIR/registry.pid"
fi

deadline=$((SECONDS + WAIT_S))
until answering; do
  if ((SECONDS >= deadline)); then
    fail "registry on $ADDR does not answer after ${WAIT_S}s; last log lines: $(tail -n 5 "$LOG" 2>/dev/null)"
  fi
  sleep 1
done
say "registry answers on $ADDR"
