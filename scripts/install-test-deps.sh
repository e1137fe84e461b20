#!/usr/bin/env bash
# Install everything the integration suite (tests/integration/) needs.  Idempotent.
#
# - Debian packages: vsftpd (a real upstream), curl, lftp and tnftp (real clients; tnftp is BSD ftp,
#   whose Ctrl-C ABOR is the Telnet synch servers expect), nftables and
#   iproute2 (namespaces, veth, the drop-everything-else rule), prometheus (promtool), haproxy
#   (the load balancer sending PROXY protocol in tests/integration/test_balancer.py and
#   test_scaleout_e2e.py, and `haproxy -c` on deploy/haproxy).
# - pure-ftpd and proftpd (with proftpd-mod-crypto, its mod_tls): their Debian packages conflict with each other and with vsftpd
#   and pull in init-system glue, so they are not installed.  Their .debs are downloaded and
#   unpacked with `dpkg -x` under $FTP_ALG_TEST_CACHE (default /var/cache/ftp-alg-test);
#   the tests run the binaries from there in the foreground.  Their shared libraries (which
#   conflict with nothing) are installed normally.
set -euo pipefail

CACHE="${FTP_ALG_TEST_CACHE:-/var/cache/ftp-alg-test}"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

PACKAGES=(
    vsftpd lftp curl tnftp nftables iproute2 procps openssl prometheus haproxy
    # the defender's shared store (defender.store: redis://...), started by its test on loopback
    redis-server
    # ftp-alg's kernel data path (data_path: kernel) loads libnftables in-process (ctypes)
    libnftables1
    # shared libraries of the unpacked pure-ftpd / proftpd binaries
    libcap2 libcrypt1 libpam0g libsodium23 libssl3 zlib1g libacl1 libhiredis0.14 libidn2-0
    libmemcached11 libmemcachedutil2 libncursesw6 libpcre2-8-0 libpcre2-posix3 libtinfo6 libwrap0
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
export DEBIAN_FRONTEND=noninteractive
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-test-deps: installing ${missing[*]}"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    # --no-install-recommends: keeps prometheus from pulling in a web UI and friends.
    $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
fi
# vsftpd's package starts a system daemon on :21 in the root namespace; the tests run
# their own in namespaces, so stop it where there is an init system that started it.
for daemon in vsftpd haproxy redis-server; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$daemon" 2>/dev/null; then
        $SUDO systemctl stop "$daemon" || true
        $SUDO systemctl disable "$daemon" >/dev/null 2>&1 || true
    fi
done

unpack() {  # unpack <package> <marker file inside the tree>
    local pkg="$1" marker="$2" dest="$CACHE/$1"
    if [ -e "$dest/$marker" ]; then
        return 0
    fi
    echo "install-test-deps: unpacking $pkg into $dest"
    local tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || {
        $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
        (cd "$tmp" && apt-get download "$pkg")
    }
    $SUDO mkdir -p "$dest.new"
    $SUDO dpkg -x "$tmp"/"${pkg}"_*.deb "$dest.new"
    rm -rf "$tmp"
    $SUDO rm -rf "$dest"
    $SUDO mv "$dest.new" "$dest"
}

$SUDO mkdir -p "$CACHE"
unpack pure-ftpd usr/sbin/pure-ftpd
unpack proftpd-core usr/sbin/proftpd
# mod_tls (FTPS tests) lives in proftpd-mod-crypto; proftpd loads modules from one ModulePath, so the module
# files are copied into the unpacked core's module directory.
unpack proftpd-mod-crypto usr/lib/proftpd/mod_tls.so
if [ ! -e "$CACHE/proftpd-core/usr/lib/proftpd/mod_tls.so" ]; then
    $SUDO cp -n "$CACHE"/proftpd-mod-crypto/usr/lib/proftpd/*.so "$CACHE/proftpd-core/usr/lib/proftpd/"
fi

for bin in /usr/sbin/vsftpd /usr/sbin/haproxy /usr/bin/curl /usr/bin/lftp /usr/bin/tnftp /usr/sbin/nft /usr/sbin/ip \
           "$CACHE/pure-ftpd/usr/sbin/pure-ftpd" "$CACHE/proftpd-core/usr/sbin/proftpd"; do
    [ -x "$bin" ] || { echo "install-test-deps: missing $bin" >&2; exit 1; }
done
[ -r "$CACHE/proftpd-core/usr/lib/proftpd/mod_tls.so" ] || { echo "install-test-deps: missing mod_tls.so" >&2; exit 1; }
echo "install-test-deps: ok ($CACHE)"
