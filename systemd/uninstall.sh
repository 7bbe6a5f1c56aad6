#!/usr/bin/env bash
# Remove the ISiC station service installed by install.sh. Keeps the configuration, the broker
# password, the state (outbox, calibration), the logs and the user unless --purge is given.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

usage() {
    cat <<EOF
Usage: sudo systemd/uninstall.sh [OPTIONS]

Stops and disables $UNIT_NAME, then removes what systemd/install.sh installed: the unit and
its drop-ins, the udev rules, the virtual environment in $PREFIX, $CANN_ENV_FILE and the
sysusers.d entry. Kept unless --purge: $STATION_TOML, $PASSWORD_FILE,
$STATE_DIR (outbox with unsent results, calibration), $LOG_DIR, the user '$SERVICE_USER'.

Options:
  --purge        also delete the kept items above (unsent results in the outbox are lost)
  --root DIR     act on DIR instead of / (as install.sh --root)
  --dry-run      print every step and command without changing anything
  -h, --help     this text
EOF
}

PURGE=0
while [ $# -gt 0 ]; do
    if parse_common_option "$@"; then
        shift "$SHIFT_BY"
        continue
    fi
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --purge) PURGE=1; shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

require_root

step "Stopping and disabling $UNIT_NAME"
if [ -n "$ROOT" ]; then
    if [ -e "$ROOT$UNIT_DIR/$UNIT_NAME" ]; then
        run systemctl --root="$ROOT" disable "$UNIT_NAME"
    fi
elif [ -e "$UNIT_DIR/$UNIT_NAME" ] || [ "$DRY_RUN" = 1 ]; then
    run systemctl disable --now "$UNIT_NAME"
else
    note "not installed"
fi

step "Removing the unit, its drop-ins, the udev rules and the sysusers.d entry"
remove_path "$UNIT_DIR/$UNIT_NAME" "$DROPIN_DIR" "$UDEV_RULES" "$SYSUSERS_CONF"
if [ -z "$ROOT" ]; then
    run systemctl daemon-reload
    run udevadm control --reload
fi

step "Removing the Python environment and the CANN environment file"
remove_path "$PREFIX" "$CANN_ENV_FILE"

if [ "$PURGE" = 1 ]; then
    step "Purging configuration, password, state, logs and the user '$SERVICE_USER'"
    remove_path "$CONF_DIR" "$STATE_DIR" "$LOG_DIR"
    if [ -n "$ROOT" ]; then
        note "user database of $ROOT left as is: userdel --root $ROOT $SERVICE_USER removes the user"
    elif getent passwd "$SERVICE_USER" >/dev/null 2>&1 || [ "$DRY_RUN" = 1 ]; then
        run userdel "$SERVICE_USER"
    fi
else
    step "Kept: $STATION_TOML, $PASSWORD_FILE, $STATE_DIR, $LOG_DIR, user $SERVICE_USER (--purge removes them)"
fi
step "Done"
