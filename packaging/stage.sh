#!/bin/sh
# Lay out the files of the crs and cig packages. debian/rules and
# rpm/cryptify.spec both call this, so the two formats ship the same files.
#
#   stage.sh venv VENV
#       Build the virtualenv (the project's wheel and every Python
#       dependency, from the package index: at build time only) in VENV.
#   stage.sh man VENV
#       Generate the manual pages into build/man from the CLIs' own
#       definitions, with the venv's Python (`make man` does the same).
#   stage.sh install PKG DESTDIR VENV [RPM_FILELIST]
#       Install package PKG (crs or cig) under DESTDIR, with a copy of VENV
#       moved to /opt/PKG/venv. With RPM_FILELIST, also write the rpm
#       %files list (configs marked %config(noreplace)).
#
# The source tree is the current directory. PYTHON (default python3.11)
# is the interpreter the venv runs on: the target system's own.
set -eu

PYTHON="${PYTHON:-python3.11}"
SRC="$(pwd)"

die() {
    echo "stage.sh: $*" >&2
    exit 1
}

build_venv() {
    venv="$1"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    wheels="$(mktemp -d)"
    # Build our wheel from the tree, then install it with its dependencies.
    "$venv/bin/python" -m pip wheel -q --no-deps --wheel-dir "$wheels" "$SRC"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$wheels"/cryptify-*.whl
    rm -rf "$wheels"
    # The installers themselves are not needed to run: leave them out.
    "$venv/bin/python" -m pip uninstall -q -y pip setuptools
}

# Move the venv at $1 to its final place $3 (an absolute path), staged
# under $2: rewrite the script lines and files that name the build path,
# byte-compile for the final path, build Twisted's plugin cache.
relocate_venv() {
    from="$1"
    dest="$2"
    to="$3"
    mkdir -p "$(dirname "$dest$to")"
    cp -a "$from" "$dest$to"
    grep -rlI -F -- "$from" "$dest$to" | while read -r f; do
        sed -i "s|$from|$to|g" "$f"
    done
    # Records of where pip found the wheel: a build path, of no use.
    find "$dest$to" -name direct_url.json -delete
    find "$dest$to" -name __pycache__ -prune -exec rm -rf {} +
    # Twisted writes dropin.cache next to the plugins on first use; the
    # units' read-only /opt would refuse it, so it ships ready.
    PYTHONDONTWRITEBYTECODE=1 "$dest$to/bin/python" \
        -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
    # Hash-checked byte code stays valid whatever mtimes dpkg/rpm give the
    # sources, and names the final paths in tracebacks.
    "$dest$to/bin/python" -m compileall -q -f -j0 --invalidation-mode checked-hash \
        -s "$dest" -p / "$dest$to/lib"
    if grep -rlI -F -- "$from" "$dest$to" >/dev/null; then
        die "build path $from still named in $dest$to"
    fi
}

# put MODE SOURCE TARGET [config]: install one file and note it for rpm.
put() {
    install -D -m "$1" "$2" "$DEST$3"
    note "$3" "${4:-}"
}

note() {
    [ -n "$FILELIST" ] || return 0
    case "${2:-}" in
        config) echo "%config(noreplace) $1" >>"$FILELIST" ;;
        config-crs) echo "%config(noreplace) %attr(0640,root,crsuser) $1" >>"$FILELIST" ;;
        dir) echo "%dir $1" >>"$FILELIST" ;;
        dir-*) echo "%dir %attr(${3:-0750},${2#dir-},${2#dir-}) $1" >>"$FILELIST" ;;
        *) echo "$1" >>"$FILELIST" ;;
    esac
}

# mkdir_noted DIR [OWNER MODE]: a directory of the package; the owner
# (a system user made by the maintainer scripts) applies to rpm here and
# to deb in postinst.
mkdir_noted() {
    install -d -m "${3:-0755}" "$DEST$1"
    if [ -n "${2:-}" ]; then
        note "$1" "dir-$2" "$3"
    else
        note "$1" dir
    fi
}

# Manual pages written into build/man (PAGE.SECTION) by `stage.sh man`
# before staging (a missing one fails the build). Compressed here, so the deb (dh_compress leaves .gz alone) and the rpm
# list the same names.
install_man() {
    for page in "$@"; do
        section="${page##*.}"
        [ -f "$SRC/build/man/$page" ] || die "no manual page build/man/$page (run: stage.sh man VENV)"
        install -d "$DEST/usr/share/man/man$section"
        gzip -9n <"$SRC/build/man/$page" >"$DEST/usr/share/man/man$section/$page.gz"
        chmod 0644 "$DEST/usr/share/man/man$section/$page.gz"
        note "/usr/share/man/man$section/$page.gz"
    done
}

install_pkg() {
    pkg="$1"
    DEST="$2"
    venv="$3"
    FILELIST="${4:-}"
    [ -d "$venv" ] || die "no venv at $venv (run: stage.sh venv $venv)"
    [ -z "$FILELIST" ] || : >"$FILELIST"
    mkdir_noted "/opt/$pkg"
    relocate_venv "$venv" "$DEST" "/opt/$pkg/venv"
    note "/opt/$pkg/venv"
    mkdir_noted "/opt/$pkg/scripts"
    put 0755 scripts/notify.sh "/opt/$pkg/scripts/notify.sh" config
    case "$pkg" in
    crs)
        put 0640 packaging/crs.conf /opt/crs/crs.conf config-crs
        put 0644 etc/crs-local.conf /opt/crs/crs-local.conf config
        put 0644 etc/iw-crs.conf /opt/crs/iw-crs.conf config
        mkdir_noted /opt/crs/accounts crsuser 0755
        mkdir_noted /opt/crs/data crsuser 0750
        units="crs.service crs_relay.service"
        clis="crs-cli"
        install_man crs-cli.8 cryptify-kms.1 cryptify-client.1 cryptify-admin.1
        ;;
    cig)
        put 0644 packaging/cig.conf /opt/cig/cig.conf config
        mkdir_noted /opt/cig/bin
        put 0755 packaging/create_cig_maildir /opt/cig/bin/create_cig_maildir
        put 0755 packaging/pdftoraw /usr/bin/pdftoraw
        mkdir_noted /opt/cig/userdata ciguser 0750
        mkdir_noted /opt/cig/mail
        units="cig-server.service cig-relay.service"
        clis="cig-cli cig-migrate-maps"
        install_man cig-cli.8
        ;;
    *)
        die "unknown package $pkg (crs or cig)"
        ;;
    esac
    for unit in $units; do
        put 0644 "etc/systemd/$unit" "/lib/systemd/system/$unit"
    done
    for cli in $clis; do
        mkdir -p "$DEST/usr/bin"
        ln -sf "/opt/$pkg/venv/bin/$cli" "$DEST/usr/bin/$cli"
        note "/usr/bin/$cli"
    done
}

case "${1:-}" in
venv)
    [ $# -eq 2 ] || die "usage: stage.sh venv VENV"
    build_venv "$2"
    ;;
man)
    [ $# -eq 2 ] || die "usage: stage.sh man VENV"
    "$2/bin/python" -m cryptify.tools.manpage "$SRC/build/man"
    ;;
install)
    [ $# -ge 4 ] || die "usage: stage.sh install PKG DESTDIR VENV [RPM_FILELIST]"
    install_pkg "$2" "$3" "$4" "${5:-}"
    ;;
*)
    die "usage: stage.sh venv VENV | man VENV | install PKG DESTDIR VENV [RPM_FILELIST]"
    ;;
esac
