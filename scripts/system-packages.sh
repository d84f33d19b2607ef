#!/usr/bin/env bash
# What the test suite needs of the system, installed once per machine (idempotent, quick when
# everything is present; needs root, or sudo):
# - Debian packages: espeak-ng makes real speech for the audio-feature tests; SLURM, munge,
#   slurmdbd and MariaDB make the real clusters of tests/integration (the tests start and stop
#   their own daemons);
# - OpenPBS, built from the pinned source in ../shared/vendor/openpbs into /opt/pbs (a few
#   minutes, skipped while /opt/pbs/.openpbs-commit names that commit): the PBS tests start
#   their own one-node server from it. Without ../shared there is nothing to build, and the
#   PBS tests say so.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

packages=(espeak-ng slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -ne 0 ]; then
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

openpbs="$here/../../shared/vendor/openpbs/pbs-one-node.sh"
if [ -f "$openpbs" ]; then
    commit=$(sed -n 's/^PBS_COMMIT=\${PBS_COMMIT:-\([0-9a-f]*\)}.*/\1/p' "$openpbs")
    if [ "$(cat /opt/pbs/.openpbs-commit 2>/dev/null)" != "$commit" ]; then
        echo "building OpenPBS ${commit:0:7} into /opt/pbs (once per machine, a few minutes)" >&2
        log=$(mktemp)
        for step in deps build; do
            if ! $sudo bash "$openpbs" "$step" >"$log" 2>&1; then
                tail -n 40 "$log" >&2
                echo "OpenPBS $step failed (the whole log: $log)" >&2
                exit 1
            fi
        done
        rm -f "$log"
    fi
fi
