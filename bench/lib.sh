# Shared by the benchmark scripts: `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.
# shellcheck shell=bash

log() { printf '%s\n' "$*" >&2; }

die() {
    log "$(basename "$0"): error: $*"
    exit 1
}

# apt_install PKG...: install Debian packages (root only), running `apt-get update` once.
apt_updated=0
apt_install() {
    if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing Debian package(s) $*: install them and run again"
    fi
    if ((!apt_updated)); then
        log "apt-get update"
        apt-get update -qq
        apt_updated=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
