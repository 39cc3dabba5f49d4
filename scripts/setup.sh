#!/usr/bin/env bash
# Installs what the agent, the demo and the tests need on a Debian machine, then builds.
# Idempotent: packages already present are not reinstalled; `npm ci` only when the lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: PKCS#11 modules (SoftHSM, ykcs11, OpenSC, tpm2-pkcs11, p11-kit's server and client
# for docs/remote-tokens.md), the software TPM,
# the PC/SC daemon with the virtual reader driver (virtual YubiKey tests), pinentry, notify-send,
# hyperfine (benchmarks), a C compiler for the fault-injecting test module, and what the user-facing
# tests run: tmux (the touch countdown in a 100-column pane), systemd (`systemd-analyze verify` of the
# unit), zsh and fish (their completion scripts), groff (the man page).
APT_PACKAGES=(softhsm2 opensc ykcs11 yubico-piv-tool p11-kit p11-kit-modules libp11-kit-dev gnutls-bin
  libtpm2-pkcs11-1 libtpm2-pkcs11-tools swtpm swtpm-tools tpm2-tools pcscd vsmartcard-vpcd
  libusb-1.0-0 hyperfine pinentry-tty libnotify-bin gcc make openssl
  tmux systemd zsh fish groff-base
  iproute2 util-linux # `ip`, `unshare`, `nsenter`: the virtual YubiKey's private pcscd namespaces
  nginx # a bearer-token static sparse index behind the gateway (test/e2e/gateway.test.ts)
  openssh-client openssh-server) # the agent socket over SSH: a loopback sshd of the test's own (test/e2e/ssh-forward.test.ts)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} > 0)); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}" >&2
    echo "setup: run as root, or: sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  # openssh-server's postinst (like nginx's) starts the system service through invoke-rc.d. The tests
  # start their own sshd on a free port and must neither depend on nor disturb a system one, so the
  # install runs under a policy-rc.d that forbids starting services (exit 101, invoke-rc.d(8) and
  # Debian's /usr/share/doc/init-system-helpers/README.policy-rc.d.gz) unless the machine has its own.
  policy=/usr/sbin/policy-rc.d
  ours=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && ours=1
    trap 'if [ -n "$ours" ]; then rm -f "$policy"; fi' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$ours" ]; then rm -f "$policy"; ours=""; fi
fi

# pkcs11js is a native addon: node-gyp must use the local Node headers (.npmrc sets nodedir=/usr).
export npm_config_nodedir="${npm_config_nodedir:-/usr}"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm run --silent build

# The fault-injecting PKCS#11 module used by tests (forwards to SoftHSM).
if [ -f test/fixtures/faulty-pkcs11/Makefile ]; then
  make -s -C test/fixtures/faulty-pkcs11
fi
