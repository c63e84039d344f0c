#!/usr/bin/env bash
# Install the peer file systems the benchmark compares against (Debian 12).
# Idempotent and non-interactive: packages already present are not reinstalled,
# and the system sshd is NOT enabled or started (the harness runs its own
# private sshd on 127.0.0.1 for the sshfs target).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

PACKAGES=(fuse3 gocryptfs cryfs sshfs openssh-server openssh-client tar)

if [[ "$(id -u)" -ne 0 ]]; then
    SUDO=sudo
else
    SUDO=
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "setup_peers: all peers already installed (${PACKAGES[*]})"
else
    echo "setup_peers: installing ${missing[*]}"
    # Keep the maintainer scripts from starting sshd on the host (policy-rc.d
    # is honoured by invoke-rc.d); remove it again only if we created it.
    created_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
        $SUDO chmod +x /usr/sbin/policy-rc.d
        created_policy=1
    fi
    cleanup() {
        if ((created_policy)); then
            $SUDO rm -f /usr/sbin/policy-rc.d
        fi
    }
    trap cleanup EXIT
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}"
fi

# sshd refuses to start without its privilege-separation directory.
$SUDO mkdir -p /run/sshd
$SUDO chmod 0755 /run/sshd

# FUSE needs the device node.
if [[ ! -c /dev/fuse ]]; then
    echo "setup_peers: warning: /dev/fuse is missing; FUSE targets will fail" >&2
fi

for tool in gocryptfs cryfs sshfs fusermount3 /usr/sbin/sshd ssh-keygen; do
    if command -v "$tool" >/dev/null 2>&1; then
        echo "setup_peers: ok  $tool"
    else
        echo "setup_peers: MISSING $tool" >&2
    fi
done
gocryptfs -version 2>/dev/null | head -n1 || true
cryfs --version 2>/dev/null | head -n1 || true
sshfs --version 2>&1 | grep -i sshfs | head -n1 || true
