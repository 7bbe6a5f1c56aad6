#!/usr/bin/env bash
# Install (or update) the ISiC station as a systemd service on an Atlas 200 DK / 200I DK A2.
# Run as root on the board from a checkout of the repository; safe to run again.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

usage() {
    cat <<EOF
Usage: sudo systemd/install.sh [OPTIONS]

Installs the ISiC textile inspection station as the systemd service $UNIT_NAME:
  1. the system user '$SERVICE_USER' (groups dialout, video, and $NPU_GROUP when it exists)
  2. a Python virtual environment in $VENV with the station and its board
     dependencies only (numpy, OpenCV, pyserial, paho-mqtt, jsonschema; ONNX Runtime as
     the CPU fallback unless --no-cpu-fallback); no torch, no scikit-learn
  3. $STATION_TOML from config/atlas-200dk.toml (only if absent) and an empty
     $PASSWORD_FILE for the broker password (only if absent)
  4. $CANN_ENV_FILE: the CANN environment (LD_LIBRARY_PATH, PYTHONPATH, ASCEND_*)
     taken from CANN's set_env.sh, and a .pth file so the venv sees CANN's 'acl' module
  5. the unit, a drop-in allowing this board's Ascend device nodes, the udev rules
     ($UDEV_RULES), then daemon-reload, udev reload and trigger
  6. systemctl enable, and (re)start the service

Existing config, password, state (/var/lib/isic-station) and logs are kept.

Options:
  --repo DIR             repository to install from (default: the one holding this script)
  --python PYTHON        interpreter for the venv (default: python3). It must be 3.8 or newer
                         and, for the NPU, the version your CANN's pyACL was built for.
  --cann-set-env FILE    CANN's environment script
                         (default: /usr/local/Ascend/ascend-toolkit/set_env.sh)
  --no-cann              no CANN: remove $CANN_ENV_FILE; the station runs on the CPU
  --no-cpu-fallback      do not install ONNX Runtime (NPU only)
  --pip-option OPT       pass OPT to pip install (repeatable), e.g. for an offline board:
                         --pip-option=--no-index --pip-option=--find-links=/media/usb/wheels
  --skip-venv            keep the installed venv as it is (only config, unit and rules change)
  --no-start             enable the service but do not (re)start it now
  --systemd-version N    act as for systemd N (default: what systemctl --version says)
  --root DIR             install into DIR instead of / (for inspection and tests: no user
                         database changes outside DIR, no daemon-reload, no udev, no start)
  --dry-run              print every step and command without changing anything
  -h, --help             this text

After installing: systemctl status $SERVICE; journalctl -u $SERVICE -f
EOF
}

REPO=$(dirname "$HERE")
PYTHON=python3
CANN_SET_ENV=/usr/local/Ascend/ascend-toolkit/set_env.sh
USE_CANN=1
CPU_FALLBACK=1
SKIP_VENV=0
START=1
SYSTEMD_VERSION=""
PIP_OPTIONS=()

# Ascend driver nodes beyond the four the unit allows; present on some boards only
# (Atlas 200 DK in RC mode, Atlas 200I DK A2 / 310B). The drop-in allows those that exist.
EXTRA_ASCEND_NODES=(svm0 ts_aisle upgrade sys vdec vpc pngd venc dvpp_cmdlist log_drv event_sched
                    hi_dvpp memory_bandwidth xsmem_dev spi_smbus user_config)

while [ $# -gt 0 ]; do
    if parse_common_option "$@"; then
        shift "$SHIFT_BY"
        continue
    fi
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --repo) [ $# -ge 2 ] || die "--repo needs a folder"; REPO=$2; shift 2 ;;
        --repo=*) REPO=${1#--repo=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#--python=}; shift ;;
        --cann-set-env) [ $# -ge 2 ] || die "--cann-set-env needs a file"; CANN_SET_ENV=$2; shift 2 ;;
        --cann-set-env=*) CANN_SET_ENV=${1#--cann-set-env=}; shift ;;
        --no-cann) USE_CANN=0; shift ;;
        --no-cpu-fallback) CPU_FALLBACK=0; shift ;;
        --pip-option) [ $# -ge 2 ] || die "--pip-option needs a value"; PIP_OPTIONS+=("$2"); shift 2 ;;
        --pip-option=*) PIP_OPTIONS+=("${1#--pip-option=}"); shift ;;
        --skip-venv) SKIP_VENV=1; shift ;;
        --no-start) START=0; shift ;;
        --systemd-version) [ $# -ge 2 ] || die "--systemd-version needs a number"; SYSTEMD_VERSION=$2; shift 2 ;;
        --systemd-version=*) SYSTEMD_VERSION=${1#--systemd-version=}; shift ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

check_prerequisites() {
    step "Checking prerequisites"
    require_root
    [ -f "$REPO/pyproject.toml" ] || die "--repo $REPO: no pyproject.toml there (give the repository's folder)"
    REPO=$(cd "$REPO" && pwd)
    [ -f "$REPO/config/atlas-200dk.toml" ] || die "$REPO/config/atlas-200dk.toml is missing (the config template)"
    if [ "$SKIP_VENV" = 0 ]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "--python $PYTHON: not found (install python3 and python3-venv)"
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
            || die "$PYTHON is $("$PYTHON" -V 2>&1); the station needs Python 3.8 or newer (pass --python)"
        "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
            || die "$PYTHON cannot create virtual environments (apt-get install python3-venv)"
    fi
    if [ -z "$SYSTEMD_VERSION" ]; then
        SYSTEMD_VERSION=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }' | tr -cd '0-9')
    fi
    [[ "$SYSTEMD_VERSION" =~ ^[0-9]+$ ]] || die "cannot tell the systemd version (pass --systemd-version N)"
    note "repository $REPO, systemd $SYSTEMD_VERSION${ROOT:+, root $ROOT}"
}

install_user() {
    step "System user '$SERVICE_USER'"
    local conf
    conf=$(cat "$HERE/isic-station.sysusers")
    if getent_group "$NPU_GROUP"; then
        note "group $NPU_GROUP exists (owner of the NPU's device nodes): adding $SERVICE_USER to it"
        conf+=$'\n'"m $SERVICE_USER $NPU_GROUP"
    else
        note "no $NPU_GROUP group here: no Ascend driver installed, the NPU will not be reachable"
    fi
    printf '%s\n' "$conf" | write_file "$SYSUSERS_CONF" 0644
    if [ -n "$ROOT" ]; then
        run systemd-sysusers --root="$ROOT" "$ROOT$SYSUSERS_CONF"
    else
        run systemd-sysusers "$SYSUSERS_CONF"
    fi
}

# getent_group NAME: does the group exist on the target system?
getent_group() {
    if [ -n "$ROOT" ]; then
        grep -q "^$1:" "$ROOT/etc/group" 2>/dev/null
    else
        getent group "$1" >/dev/null 2>&1
    fi
}

install_venv() {
    step "Python environment $VENV"
    if [ "$SKIP_VENV" = 1 ]; then
        note "skipped (--skip-venv)"
        return
    fi
    local wanted
    wanted=$(python_version "$PYTHON")
    if [ -x "$ROOT$VENV/bin/python" ] && [ "$(python_version "$ROOT$VENV/bin/python")" = "$wanted" ]; then
        note "reusing the existing environment (Python $wanted)"
    else
        run "$PYTHON" -m venv --clear "$ROOT$VENV"
    fi
    local target=$REPO
    if [ "$CPU_FALLBACK" = 1 ]; then
        target="${REPO}[runtime]"
        note "with ONNX Runtime as the CPU fallback"
    fi
    run "$ROOT$VENV/bin/python" -m pip install --disable-pip-version-check ${PIP_OPTIONS[@]+"${PIP_OPTIONS[@]}"} "$target"
    run cp "$REPO/README.md" "$ROOT$PREFIX/README.md"
}

python_version() {
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

install_config() {
    step "Configuration $CONF_DIR"
    if [ -e "$ROOT$STATION_TOML" ]; then
        note "keeping $ROOT$STATION_TOML"
    else
        write_file "$STATION_TOML" 0640 <"$REPO/config/atlas-200dk.toml"
        note "edit it: the broker (mqtt.host, mqtt.username), the station id, the camera scale"
    fi
    if [ -e "$ROOT$PASSWORD_FILE" ]; then
        note "keeping $ROOT$PASSWORD_FILE"
    else
        write_file "$PASSWORD_FILE" 0600 </dev/null
        note "put the broker password in $PASSWORD_FILE (systemd hands it to the station as a credential)"
    fi
    set_owner "root:$SERVICE_USER" "$STATION_TOML"
}

# set_owner OWNER PATH: chown on the live system; the user database of a --root is not the host's.
set_owner() {
    if [ -n "$ROOT" ]; then
        note "ownership of $ROOT$2 left as is (--root)"
    else
        run chown "$1" "$2"
    fi
}

# The variables of CANN's set_env.sh, as NAME="value" lines for systemd's EnvironmentFile=.
cann_environment() {
    # shellcheck disable=SC2016  # $1 expands in the child shell, on purpose
    env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        bash -c '. "$1" >/dev/null 2>&1 || exit 1; env -0' isic-cann-env "$1" |
    while IFS= read -r -d '' entry; do
        local name=${entry%%=*} value=${entry#*=}
        case "$name" in
            LD_LIBRARY_PATH|PYTHONPATH|ASCEND_*|TOOLCHAIN_HOME) ;;
            *) continue ;;
        esac
        if [ "$name" = LD_LIBRARY_PATH ] || [ "$name" = PYTHONPATH ]; then
            # set_env.sh appends ":$LD_LIBRARY_PATH"; an empty element would mean the working folder.
            value=$(printf '%s' "$value" | tr ':' '\n' | awk 'NF && !seen[$0]++' | paste -sd: -)
        fi
        value=${value//\\/\\\\}
        value=${value//\"/\\\"}
        value=${value//\$/\\\$}
        value=${value//\`/\\\`}
        printf '%s="%s"\n' "$name" "$value"
    done
}

install_cann_env() {
    step "CANN environment $CANN_ENV_FILE"
    local pth_dir="" pth
    if [ -x "$ROOT$VENV/bin/python" ] && [ "$DRY_RUN" = 0 ]; then
        pth_dir=$("$ROOT$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    fi
    pth="${pth_dir:-$ROOT$VENV/lib/pythonX.Y/site-packages}/isic-cann.pth"
    if [ "$USE_CANN" = 0 ]; then
        note "--no-cann: the station runs on ONNX Runtime (CPU)"
        remove_path "$CANN_ENV_FILE" "$DROPIN_DIR/cann-home.conf"
        [ -e "$pth" ] && run rm -f -- "$pth"
        return 0
    fi
    if [ ! -f "$CANN_SET_ENV" ]; then
        warn "CANN's set_env.sh is not at $CANN_SET_ENV: no NPU environment written, the station will run" \
             "on the CPU backend. Install the CANN toolkit/nnrt, or pass --cann-set-env PATH (or --no-cann)."
        remove_path "$DROPIN_DIR/cann-home.conf"
        return 0
    fi
    local dump
    dump=$(cann_environment "$CANN_SET_ENV") || die "sourcing $CANN_SET_ENV failed (run it by hand to see why)"
    grep -q '^LD_LIBRARY_PATH=' <<<"$dump" || warn "$CANN_SET_ENV set no LD_LIBRARY_PATH: pyACL will not load"
    grep -q '^PYTHONPATH=' <<<"$dump" || warn "$CANN_SET_ENV set no PYTHONPATH: the 'acl' module will not be found"
    {
        printf '# Written by systemd/install.sh from %s; rerun the installer after a CANN upgrade.\n' "$CANN_SET_ENV"
        printf '%s\n' "$dump"
    } | write_file "$CANN_ENV_FILE" 0644
    note "$(grep -c '=' <<<"$dump") variables: $(cut -d= -f1 <<<"$dump" | paste -sd' ' -)"
    allow_cann_under_home "$dump"

    # The venv sees CANN's Python folders (the 'acl' module) even outside the service.
    local pythonpath
    pythonpath=$(bash -c '. /dev/stdin; printf "%s" "${PYTHONPATH:-}"' <<<"$dump")
    if [ -n "$pythonpath" ] && [ "$SKIP_VENV" = 0 ]; then
        tr ':' '\n' <<<"$pythonpath" | write_file "${pth#"$ROOT"}" 0644
        check_acl_import "$pythonpath"
    fi
}

# A CANN installed by a non-root user lives in a home folder, which ProtectHome=yes hides from the
# service: then the service may read home folders (still not write them).
allow_cann_under_home() {
    if grep -Eq '^[A-Z_0-9]+="([^"]*:)?/(home|root)/' <<<"$1"; then
        note "CANN lives under /home or /root: the service gets read-only access to home folders"
        printf '# Written by systemd/install.sh: CANN (%s) is installed in a home folder.\n[Service]\nProtectHome=read-only\n' \
            "$CANN_SET_ENV" | write_file "$DROPIN_DIR/cann-home.conf" 0644
    else
        remove_path "$DROPIN_DIR/cann-home.conf"
    fi
}

# Can the venv's Python import pyACL with the CANN environment? Only a warning: the CPU fallback works.
check_acl_import() {
    [ "$DRY_RUN" = 0 ] || return 0
    # shellcheck source=/dev/null
    if (set -a; . "$ROOT$CANN_ENV_FILE"; set +a; "$ROOT$VENV/bin/python" -c 'import acl') >/dev/null 2>&1; then
        note "pyACL imports in the venv: the NPU backend is available"
    else
        warn "the venv's Python ($("$ROOT$VENV/bin/python" -V 2>&1)) cannot import pyACL from $1;" \
             "the station will fall back to the CPU. Use --python with the Python version your CANN supports."
    fi
}

install_unit() {
    step "Service unit $UNIT_DIR/$UNIT_NAME"
    write_file "$UNIT_DIR/$UNIT_NAME" 0644 <"$HERE/$UNIT_NAME"

    # This board's further Ascend nodes (DevicePolicy=closed blocks every device not listed).
    local path node nodes=() allowed=()
    for path in "$ROOT"/dev/davinci[0-9]*; do
        nodes+=("${path##*/}")
    done
    for node in "${nodes[@]}" "${EXTRA_ASCEND_NODES[@]}"; do
        if [ "$node" != davinci0 ] && [ -e "$ROOT/dev/$node" ]; then
            allowed+=("DeviceAllow=/dev/$node rw")
        fi
    done
    if [ ${#allowed[@]} -gt 0 ]; then
        { printf '# Written by systemd/install.sh: the Ascend device nodes present on this board.\n[Service]\n'
          printf '%s\n' "${allowed[@]}"; } | write_file "$DROPIN_DIR/ascend-devices.conf" 0644
    else
        note "no further Ascend device nodes on this board"
        remove_path "$DROPIN_DIR/ascend-devices.conf"
    fi

    # systemd before 247 ignores LoadCredential=: hand the password over by file permissions instead.
    if [ "$SYSTEMD_VERSION" -lt 247 ]; then
        note "systemd $SYSTEMD_VERSION has no LoadCredential=: the station reads $PASSWORD_FILE directly"
        printf '# Written by systemd/install.sh: systemd %s predates LoadCredential= (247).\n[Service]\nEnvironment=CREDENTIALS_DIRECTORY=%s\n' \
            "$SYSTEMD_VERSION" "$CONF_DIR" | write_file "$DROPIN_DIR/credentials-compat.conf" 0644
        set_owner "root:$SERVICE_USER" "$PASSWORD_FILE"
        run chmod 0640 "$ROOT$PASSWORD_FILE"
    else
        remove_path "$DROPIN_DIR/credentials-compat.conf"
    fi
    if [ -d "$ROOT$DROPIN_DIR" ] && [ -z "$(ls -A "$ROOT$DROPIN_DIR")" ]; then
        run rmdir "$ROOT$DROPIN_DIR"
    fi
}

install_udev_rules() {
    step "udev rules $UDEV_RULES (/dev/isic-spectrometer, /dev/isic-microscope)"
    write_file "$UDEV_RULES" 0644 <"$REPO/drivers/isic_drivers/udev/99-isic-station.rules"
    note "the USB ids are at the top of that file: edit them there if your devices differ"
    if [ -z "$ROOT" ]; then
        run udevadm control --reload
        run udevadm trigger --action=add --subsystem-match=tty --subsystem-match=video4linux
    else
        note "udev reload and trigger skipped (--root)"
    fi
}

enable_service() {
    step "Enabling $UNIT_NAME"
    if [ -n "$ROOT" ]; then
        run systemctl --root="$ROOT" enable "$UNIT_NAME"
        note "daemon-reload and start skipped (--root)"
        return
    fi
    run systemctl daemon-reload
    run systemctl enable "$UNIT_NAME"
    if [ "$START" = 1 ]; then
        if ! run systemctl restart "$UNIT_NAME"; then
            die "the service did not start: see systemctl status $SERVICE and journalctl -u $SERVICE -n 30" \
                "(exit status 78 is a configuration error: fix $STATION_TOML, then systemctl restart $SERVICE)"
        fi
        note "started: systemctl status $SERVICE; journalctl -u $SERVICE -f"
    else
        note "not started (--no-start): systemctl start $SERVICE"
    fi
}

check_prerequisites
install_user
install_venv
install_config
install_cann_env
install_unit
install_udev_rules
enable_service
step "Done"
