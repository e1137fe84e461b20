#!/usr/bin/env bash
# Install (or upgrade) ftp-alg as the systemd service deploy/systemd/ftp-alg.service expects, from a checkout:
#   sudo deploy/install.sh                   (the same as: sudo ./dev install)
# What it does, each step skipped when already done:
#   /opt/ftp-alg/.venv                       a virtualenv with ftp-alg at the versions of constraints.txt
#   /etc/systemd/system/ftp-alg.service      the unit (replaced on upgrade)
#   /etc/ftp-alg/gateway.yaml                a starting config (never overwritten; edit it)
#   /etc/ftp-alg/gateway.example.yaml        every setting with its default (replaced on upgrade)
#   /opt/ftp-alg/README.md, docs/            what the unit's Documentation= points to
#   user and group ftp-alg                   the unit's User= and Group=
# Then: edit /etc/ftp-alg/gateway.yaml and run  systemctl enable --now ftp-alg
# Upgrade: pull the new checkout, run this again, then `systemctl restart ftp-alg` (a reload keeps the old code).
# Options: --root DIR  install under DIR instead of / (a package build or a test; no user, no systemctl)
#          --wheel FILE  install this wheel instead of the checkout
set -euo pipefail
SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
ROOT=/
PACKAGE="$SOURCE"
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$(realpath -m "$2")"; shift 2 ;;
        --wheel) PACKAGE="$(realpath "$2")"; shift 2 ;;
        *) echo "install.sh: unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
    esac
done
ROOT="${ROOT%/}"
PREFIX="$ROOT/opt/ftp-alg"
VENV="$PREFIX/.venv"
CONFIG="$ROOT/etc/ftp-alg"
UNITS="$ROOT/etc/systemd/system"
say() { echo "install.sh: $*"; }

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it writes /opt, /etc and adds a user), or give --root DIR" >&2
    exit 2
fi
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: ftp-alg needs Python 3.11 or newer; python3 is $(python3 -V 2>&1)" >&2
    exit 2
}

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi
say "installing ftp-alg into $VENV (pins: constraints.txt)"
pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$SOURCE/constraints.txt")
"${pip[@]}" "$PACKAGE"
# Again without dependencies, forced: an upgrade from a checkout whose version number did not change.
"${pip[@]}" --no-deps --force-reinstall "$PACKAGE"
say "installed $("$VENV/bin/ftp-alg" --version)"

install -d -m 755 "$UNITS" "$CONFIG" "$PREFIX"
install -m 644 "$SOURCE/deploy/systemd/ftp-alg.service" "$UNITS/ftp-alg.service"
install -m 644 "$SOURCE/rules/gateway.example.yaml" "$CONFIG/gateway.example.yaml"
if [ ! -e "$CONFIG/gateway.yaml" ]; then
    install -m 644 "$SOURCE/deploy/systemd/gateway.yaml" "$CONFIG/gateway.yaml"
    say "wrote $CONFIG/gateway.yaml: set upstream (your FTP server) in it"
else
    say "kept $CONFIG/gateway.yaml"
fi
install -m 644 "$SOURCE/README.md" "$PREFIX/README.md"
if [ -d "$SOURCE/docs" ]; then
    install -d -m 755 "$PREFIX/docs"
    install -m 644 "$SOURCE"/docs/*.md "$PREFIX/docs/"
fi
"$VENV/bin/ftp-alg" check --config "$CONFIG/gateway.yaml"

if [ -n "$ROOT" ]; then
    say "installed under $ROOT (no user added, systemd not told)"
    exit 0
fi
if ! getent passwd ftp-alg >/dev/null; then
    say "adding the system user ftp-alg"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group ftp-alg
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    say "done: systemctl enable --now ftp-alg (after an upgrade: systemctl restart ftp-alg)"
else
    say "done (systemd is not running here: start $VENV/bin/ftp-alg run --config /etc/ftp-alg/gateway.yaml yourself)"
fi
