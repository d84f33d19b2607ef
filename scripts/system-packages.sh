#!/usr/bin/env bash
# Debian packages the test suite needs: espeak-ng makes real speech for the audio-feature
# tests; SLURM, munge, slurmdbd and MariaDB make the real clusters of tests/integration (the
# tests start and stop their own daemons). Idempotent and quick when everything is present;
# needs root (or sudo) to install.
set -euo pipefail
packages=(espeak-ng slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
