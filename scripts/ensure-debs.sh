#!/bin/sh
# Install the named Debian packages that are not installed yet.
# Usage: ensure-debs.sh PACKAGE...
set -eu
missing=""
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Do not let package scripts start the daemons we only need as binaries.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    own_policy=1
fi
$SUDO apt-get update -qq || true
$SUDO apt-get install -y -qq --no-install-recommends $missing
[ -n "$own_policy" ] && $SUDO rm -f "$policy"
exit 0
