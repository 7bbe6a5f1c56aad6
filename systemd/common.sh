# Shared by install.sh and uninstall.sh (sourced, not run): where everything goes, and the
# helpers that print each step and honour --root DIR and --dry-run.
# shellcheck shell=bash disable=SC2034  # the variables are used by the scripts that source this file

SERVICE=isic-station
UNIT_NAME=isic-station.service
SERVICE_USER=isic-station
NPU_GROUP=HwHiAiUser
PREFIX=/opt/isic-station
VENV=$PREFIX/venv
CONF_DIR=/etc/isic-station
STATION_TOML=$CONF_DIR/station.toml
PASSWORD_FILE=$CONF_DIR/mqtt-password
CANN_ENV_FILE=$CONF_DIR/cann.env
STATE_DIR=/var/lib/isic-station
LOG_DIR=/var/log/isic-station
UNIT_DIR=/etc/systemd/system
DROPIN_DIR=$UNIT_DIR/$UNIT_NAME.d
UDEV_RULES=/etc/udev/rules.d/99-isic-station.rules
SYSUSERS_CONF=/etc/sysusers.d/isic-station.conf

# Set by parse_common_option.
ROOT=""
DRY_RUN=0

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# True when acting on this machine's running system (not --root, not --dry-run).
live() { [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ]; }

# Run a command, showing it first; under --dry-run only show it.
run() {
    printf '    + %s\n' "$*"
    if [ "$DRY_RUN" = 0 ]; then
        "$@"
    fi
}

# write_file DEST MODE: write stdin to $ROOT/DEST with MODE (atomically: a temp file, then rename).
write_file() {
    local dest="$ROOT$1" mode=$2 tmp
    if [ "$DRY_RUN" = 1 ]; then
        note "would write $dest (mode $mode)"
        cat >/dev/null
        return
    fi
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
    note "wrote $dest"
}

# remove_path PATH...: remove $ROOT/PATH (files or folders) when present.
remove_path() {
    local path
    for path in "$@"; do
        if [ -e "$ROOT$path" ] || [ -L "$ROOT$path" ]; then
            run rm -rf -- "$ROOT$path"
        fi
    done
}

# The options both scripts share; returns 1 for an option it does not know.
# Sets SHIFT_BY to the number of arguments consumed.
parse_common_option() {
    SHIFT_BY=1
    case "$1" in
        --root)
            [ $# -ge 2 ] || die "--root needs a folder"
            ROOT=$(cd "$2" 2>/dev/null && pwd) || die "--root $2: no such folder"
            SHIFT_BY=2 ;;
        --root=*)
            ROOT=$(cd "${1#--root=}" 2>/dev/null && pwd) || die "$1: no such folder" ;;
        --dry-run)
            DRY_RUN=1 ;;
        *)
            return 1 ;;
    esac
}

require_root() {
    if live && [ "$(id -u)" != 0 ]; then
        die "run this as root (sudo $0 ...), or use --dry-run to see what it would do"
    fi
}
