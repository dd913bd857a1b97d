#!/usr/bin/env bash
# retry.sh ATTEMPTS COMMAND...: run COMMAND until it succeeds, at most ATTEMPTS times,
# waiting 15, 30, 60... s between tries (RETRY_WAIT_S sets the first wait). For the
# set-up's downloads (pip, apt), which a moment's network trouble would otherwise fail.
set -uo pipefail
attempts=$1; shift
wait_s=${RETRY_WAIT_S:-15}
for ((i = 1; ; i++)); do
  "$@" && exit 0
  rc=$?
  if ((i >= attempts)); then
    echo "retry.sh: '$*' failed $i times (last exit $rc); giving up" >&2
    exit "$rc"
  fi
  echo "retry.sh: '$*' failed (exit $rc), try $((i + 1))/$attempts in ${wait_s}s" >&2
  sleep "$wait_s"
  wait_s=$((wait_s * 2))
done
