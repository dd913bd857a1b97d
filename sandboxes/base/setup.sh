#!/bin/sh
# Runs inside the fresh rootfs (chroot) before `docker import`. Part of the base recipe hash.
set -eu
useradd --create-home --uid 1000 --shell /bin/bash swe
git config --system safe.directory '*'
git config --system user.name 'swe-aem'
git config --system user.email 'swe-aem@localhost'
git config --system init.defaultBranch main
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* /usr/share/locale/*
