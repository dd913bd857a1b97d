#!/usr/bin/env bash
# apt-get with the options every set-up step needs on a shared machine: wait up to 10 min
# for a dpkg/apt lock another process holds, retry downloads, and rerun the whole command
# (scripts/retry.sh) when it still fails. Usage: bash scripts/apt.sh update -qq
set -uo pipefail
exec bash "$(dirname "$0")/retry.sh" 4 apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=5 "$@"
