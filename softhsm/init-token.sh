#!/usr/bin/env bash
# Creates a private SoftHSM token store with one token and an on-token P-384 key, for the demo and
# manual trials. PINs come from the environment (SOFTHSM_PIN, SOFTHSM_SO_PIN) and reach pkcs11-tool
# as `env:VAR`, never on a command line.
#   usage: SOFTHSM_PIN=… SOFTHSM_SO_PIN=… softhsm/init-token.sh DIR [TOKEN_LABEL] [KEY_LABEL]
#   then:  export SOFTHSM2_CONF=DIR/softhsm2.conf
set -euo pipefail
dir=${1:?usage: init-token.sh DIR [TOKEN_LABEL] [KEY_LABEL]}
token=${2:-cargo}
key=${3:-cargo}
: "${SOFTHSM_PIN:?set SOFTHSM_PIN}" "${SOFTHSM_SO_PIN:?set SOFTHSM_SO_PIN}"
module=/usr/lib/softhsm/libsofthsm2.so
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$dir/tokens"
chmod 700 "$dir" "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s#@TOKENDIR@#$dir/tokens#g" "$here/softhsm2.conf.template" >"$dir/softhsm2.conf"
chmod 600 "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"

p11() { pkcs11-tool --module "$module" "$@" >/dev/null 2> >(grep -v '^Using slot' >&2); }
p11 --init-token --label "$token" --so-pin env:SOFTHSM_SO_PIN
p11 --token-label "$token" --login --login-type so --so-pin env:SOFTHSM_SO_PIN --init-pin --pin env:SOFTHSM_PIN
p11 --token-label "$token" --login --pin env:SOFTHSM_PIN --keypairgen --key-type EC:secp384r1 --label "$key" --id 01
echo "SOFTHSM2_CONF=$SOFTHSM2_CONF"
