#!/bin/bash
# build.sh [OUTDIR]: build crs and cig as .deb and .rpm from this tree
# (`make packages`). OUTDIR defaults to build/packages.
#
# The version is the project's one (cryptify/__init__.py); PKG_VERSION
# overrides it in the copy being built (the upgrade test builds a "new"
# version this way). WITHOUT_RPM=1 skips the rpm.
set -euo pipefail

top="$(cd "$(dirname "$0")/.." && pwd)"
out="$(realpath -m "${1:-$top/build/packages}")"
project_version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$top/cryptify/__init__.py")"
[ -n "$project_version" ] || { echo "build.sh: no __version__ in cryptify/__init__.py" >&2; exit 1; }
version="${PKG_VERSION:-$project_version}"
case "$version" in
    *[!0-9A-Za-z.+~]* | [!0-9]*)
        echo "build.sh: version $version is not usable for deb and rpm" >&2
        exit 1 ;;
esac

work="$out/work-$version"
src="$work/cryptify-$version"
rm -rf "$work"
mkdir -p "$src"

# The tree as it is (committed or not), without what git ignores.
cd "$top"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            [ -e "$f" ] && printf '%s\0' "$f"
        done | tar --null -T - -cf - | tar -C "$src" -xf -
else
    tar --exclude=./build --exclude=./.venv -cf - . | tar -C "$src" -xf -
fi
if [ "$version" != "$project_version" ]; then
    sed -i "s/^__version__ = .*/__version__ = \"$version\"/" "$src/cryptify/__init__.py"
fi

cat >"$src/debian/changelog" <<EOF
cryptify ($version-1) unstable; urgency=medium

  * Built from the source tree at version $version (see CHANGELOG).

 -- Cryptify maintainers <maintainers@cryptify.invalid>  $(date -R)
EOF

venv="$work/venv"
step() { echo "== $1 ($SECONDS s)"; }
step venv
(cd "$src" && PYTHON=/usr/bin/python3.11 packaging/stage.sh venv "$venv")

# Manual pages, generated from the CLIs' own definitions (what `make man`
# does) into "$src/build/man"; packaging/stage.sh installs what it finds there.
step man
(cd "$src" && "$venv/bin/python" -m cryptify.tools.manpage build/man)

step deb
(cd "$src" && CRYPTIFY_VENV="$venv" dpkg-buildpackage -b -us -uc --no-sign)
mkdir -p "$out"
mv "$work"/crs_*.deb "$work"/cig_*.deb "$out/"

if [ -z "${WITHOUT_RPM:-}" ]; then
    step rpm
    rpmbuild -bb --quiet \
        --define "_topdir $work/rpmbuild" \
        --define "srcdir $src" \
        --define "pkgversion $version" \
        --define "venv $venv" \
        "$src/rpm/cryptify.spec"
    mv "$work"/rpmbuild/RPMS/*/*.rpm "$out/"
fi

[ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
step "built in $out"
ls -l "$out" | grep -E "_$version-1_|-$version-1\." || true
