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
  1. finds CANN's set_env.sh (--cann-set-env, else the first of: /usr/local/Ascend/cann
     (CANN >= 8.5), /usr/local/Ascend/ascend-toolkit, /usr/local/Ascend/nnrt, then the same
     three under the home folder of $NPU_GROUP (a non-root install, as on the Atlas 200 DK)),
     reads CANN's version, and picks a Python its pyACL supports (or refuses, saying why)
  2. the system user '$SERVICE_USER' (groups dialout, video, and $NPU_GROUP when it exists)
  3. a Python virtual environment in $VENV with the station and its board
     dependencies only (numpy pinned to what that CANN supports, OpenCV, pyserial, paho-mqtt,
     jsonschema; ONNX Runtime as the CPU fallback unless --no-cpu-fallback); no torch
  4. $STATION_TOML from config/atlas-200dk.toml (only if absent; inference backend
     "auto": the NPU once a compiled .om is recorded, ONNX Runtime until then) and an empty
     $PASSWORD_FILE for the broker password (only if absent)
  5. $CANN_ENV_FILE: the CANN environment (LD_LIBRARY_PATH, PYTHONPATH, ASCEND_*)
     taken from CANN's set_env.sh plus the driver's lib64, lib64/common and lib64/driver,
     and a .pth file so the venv sees CANN's 'acl' module
  6. the unit, a drop-in allowing this board's Ascend device nodes, the udev rules
     ($UDEV_RULES), then daemon-reload, udev reload and trigger
  7. an NPU check under the service's own sandbox (systemd-run with the unit's user, devices
     and environment: import acl, set_device, get_run_mode); a failure is reported, and the
     station then runs on the CPU
  8. systemctl enable, and (re)start the service

Existing config, password, state (/var/lib/isic-station) and logs are kept.

Options:
  --repo DIR             repository to install from (default: the one holding this script)
  --python PYTHON        interpreter for the venv (default: python3 if CANN's pyACL supports
                         it, else the newest python3.X on PATH that it does). 3.8 or newer.
  --cann-set-env FILE    CANN's environment script (default: searched, see step 1)
  --cann-version V       CANN's version (e.g. 8.0.RC2) when it cannot be read from the
                         install's *_install.info
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
PYTHON=""
CANN_SET_ENV=""
CANN_VERSION=""
CANN_DUMP=""
# What the venv's numpy must satisfy; narrowed from CANN's version by cann_support.
NUMPY_PIN="numpy>=1.19.2,<2"
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
        --cann-version) [ $# -ge 2 ] || die "--cann-version needs a version"; CANN_VERSION=$2; shift 2 ;;
        --cann-version=*) CANN_VERSION=${1#--cann-version=}; shift ;;
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
    if [ -z "$SYSTEMD_VERSION" ]; then
        SYSTEMD_VERSION=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }' | tr -cd '0-9')
    fi
    [[ "$SYSTEMD_VERSION" =~ ^[0-9]+$ ]] || die "cannot tell the systemd version (pass --systemd-version N)"
    note "repository $REPO, systemd $SYSTEMD_VERSION${ROOT:+, root $ROOT}"
}

# The home folder of the Ascend user (HwHiAiUser) on the target system, empty when there is none.
npu_user_home() {
    if [ -n "$ROOT" ]; then
        awk -F: -v user="$NPU_GROUP" '$1 == user { print $6 }' "$ROOT/etc/passwd" 2>/dev/null || true
    else
        getent passwd "$NPU_GROUP" 2>/dev/null | cut -d: -f6 || true
    fi
}

# CANN's set_env.sh candidates, most recent layout first (CANN >= 8.5 installs into Ascend/cann,
# older toolkits into Ascend/ascend-toolkit, the runtime-only package into Ascend/nnrt; root
# installs under /usr/local, a user's under $HOME/Ascend: the Atlas 200 DK's image installs CANN
# as HwHiAiUser). Paths as in CANN's installation guides ("set_env.sh" environment pages).
cann_candidates() {
    local home base package
    home=$(npu_user_home)
    for base in /usr/local/Ascend ${home:+"$home/Ascend"}; do
        for package in cann ascend-toolkit nnrt; do
            printf '%s\n' "$ROOT$base/$package/set_env.sh"
        done
    done
}

# dump_value NAME: the value of NAME in the cann_environment dump (empty when unset).
dump_value() {
    # shellcheck disable=SC2016  # $1 expands in the child shell, on purpose
    bash -c '. /dev/stdin; printf "%s" "${!1:-}"' isic-dump "$1" <<<"$CANN_DUMP"
}

# CANN's version from the install's <arch>-linux/ascend_*_install.info ("version=8.0.RC2"), or from
# share/info/<package>/version.info ("Version=8.5.0", what aclsysGetCANNVersion reads), looked for in
# the homes set_env.sh names and beside set_env.sh itself (its latest/ link on older layouts).
cann_version() {
    local home info version
    for home in "$(dump_value ASCEND_HOME_PATH)" "$(dump_value ASCEND_TOOLKIT_HOME)" \
                "$(dirname "$CANN_SET_ENV")/latest" "$(dirname "$CANN_SET_ENV")"; do
        [ -n "$home" ] || continue
        for info in "$home"/*-linux/ascend_*_install.info "$home"/share/info/*/version.info; do
            [ -f "$info" ] || continue
            version=$(sed -n 's/^[Vv]ersion=//p' "$info" | head -n 1)
            if [ -n "$version" ]; then
                printf '%s\n' "$version"
                return
            fi
        done
    done
}

# cann_support VERSION: sets PY_MIN, PY_MAX (pyACL is built per Python) and NUMPY_PIN; fails for
# a version it does not know. From CANN's "dependencies" pages (instg_0045/instg_0048) per release:
# 5.x ships pyACL for Python 3.7 only; 6.x-7.x and the 200I DK A2's 23.0.x support 3.7-3.9;
# 8.0 supports 3.7-3.10 with numpy 1.19.2-1.24; 8.1-8.3 3.7-3.11 (numpy <= 1.24); 8.5 and later
# 3.7-3.13 with numpy below 2 for Python below 3.13 (the station needs numpy < 2: 3.12 at most).
cann_support() {
    local major rest minor
    major=${1%%.*}
    rest=${1#*.}
    minor=${rest%%[!0-9]*}
    [[ "$major" =~ ^[0-9]+$ ]] && [[ "$minor" =~ ^[0-9]+$ ]] || return 1
    PY_MIN=3.7
    NUMPY_PIN="numpy>=1.19.2,<1.25"
    if [ "$major" -le 4 ]; then
        return 1
    elif [ "$major" = 5 ]; then
        PY_MAX=3.7
    elif [ "$major" -le 7 ] || [ "$major" = 23 ]; then
        PY_MAX=3.9
    elif [ "$major" = 8 ] && [ "$minor" = 0 ]; then
        PY_MAX=3.10
    elif [ "$major" = 8 ] && [ "$minor" -lt 5 ]; then
        PY_MAX=3.11
    elif [ "$major" -ge 8 ] && [ "$major" -lt 23 ]; then
        PY_MAX=3.12
        NUMPY_PIN="numpy>=1.19.2,<2"
    else
        return 1
    fi
}

# "3.10" -> 310, for comparisons.
python_number() {
    local major=${1%%.*} minor=${1#*.}
    printf '%d\n' $((major * 100 + minor))
}

# python_in_range VERSION LOW HIGH: LOW <= VERSION <= HIGH, both as python_number gives them.
python_in_range() {
    local number
    number=$(python_number "$1")
    [ "$number" -ge "$2" ] && [ "$number" -le "$3" ]
}

find_cann() {
    step "CANN"
    if [ "$USE_CANN" = 0 ]; then
        note "--no-cann: the station runs on ONNX Runtime (CPU)"
        return
    fi
    local candidate looked=()
    if [ -z "$CANN_SET_ENV" ]; then
        while IFS= read -r candidate; do
            looked+=("$candidate")
            if [ -f "$candidate" ]; then
                CANN_SET_ENV=$candidate
                break
            fi
        done < <(cann_candidates)
        if [ -z "$CANN_SET_ENV" ]; then
            warn "no CANN found (looked for ${looked[*]}): no NPU environment written, the station will run" \
                 "on the CPU backend. Install the CANN toolkit/nnrt, or pass --cann-set-env PATH (or --no-cann)."
            return
        fi
    elif [ ! -f "$CANN_SET_ENV" ]; then
        warn "CANN's set_env.sh is not at $CANN_SET_ENV: no NPU environment written, the station will run" \
             "on the CPU backend. Install the CANN toolkit/nnrt, or pass --cann-set-env PATH (or --no-cann)."
        CANN_SET_ENV=""
        return
    fi
    note "environment script $CANN_SET_ENV"
    CANN_DUMP=$(cann_environment "$CANN_SET_ENV") || die "sourcing $CANN_SET_ENV failed (run it by hand to see why)"
    [ -n "$CANN_VERSION" ] || CANN_VERSION=$(cann_version)
    if [ -z "$CANN_VERSION" ]; then
        warn "cannot tell CANN's version (no *_install.info with version=): the Python and numpy are not" \
             "checked against its pyACL. Pass --cann-version (e.g. 8.0.RC2) to check them."
    elif cann_support "$CANN_VERSION"; then
        note "CANN $CANN_VERSION: pyACL for Python $PY_MIN-$PY_MAX, $NUMPY_PIN"
    else
        warn "CANN $CANN_VERSION is a release this installer does not know: Python and numpy are not checked"
        CANN_VERSION=""
    fi
}

# The venv's interpreter: --python, or python3, or the newest python3.X on PATH, that CANN's pyACL supports.
choose_python() {
    step "Python for $VENV"
    if [ "$SKIP_VENV" = 1 ]; then
        note "skipped (--skip-venv)"
        return
    fi
    local low=308 high=399 why="the station needs Python 3.8 or newer" candidate version found=()
    if [ -n "$CANN_SET_ENV" ] && [ -n "$CANN_VERSION" ]; then
        why="CANN $CANN_VERSION's pyACL is built for Python $PY_MIN-$PY_MAX and the station needs 3.8 or newer"
        [ "$(python_number "$PY_MAX")" -ge "$low" ] \
            || die "CANN $CANN_VERSION ships pyACL for Python $PY_MAX only and the station needs 3.8 or newer:" \
                   "upgrade CANN (6.0 or later), or install with --no-cann to run on the CPU"
        high=$(python_number "$PY_MAX")
    fi
    if [ -n "$PYTHON" ]; then
        command -v "$PYTHON" >/dev/null 2>&1 || die "--python $PYTHON: not found (install python3 and python3-venv)"
        version=$(python_version "$PYTHON")
        python_in_range "$version" "$low" "$high" \
            || die "--python $PYTHON is Python $version; $why. Pass one in that range, or --no-cann for the CPU"
    else
        for candidate in python3 python3.13 python3.12 python3.11 python3.10 python3.9 python3.8; do
            command -v "$candidate" >/dev/null 2>&1 || continue
            version=$(python_version "$candidate") || continue
            found+=("$candidate ($version)")
            if python_in_range "$version" "$low" "$high"; then
                PYTHON=$candidate
                break
            fi
        done
        [ -n "$PYTHON" ] || die "no fitting Python on PATH (found: ${found[*]:-none}); $why." \
                                "Install one (e.g. apt-get install python3.9 python3.9-venv) or pass --python"
    fi
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$PYTHON cannot create virtual environments (apt-get install python3-venv)"
    note "$PYTHON (Python $version); $NUMPY_PIN"
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
    run "$ROOT$VENV/bin/python" -m pip install --disable-pip-version-check ${PIP_OPTIONS[@]+"${PIP_OPTIONS[@]}"} \
        "$target" "$NUMPY_PIN"
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

# The variables of CANN's set_env.sh, as NAME="value" lines for systemd's EnvironmentFile=, with
# the driver's library folders appended to LD_LIBRARY_PATH: set_env.sh leaves out lib64/common and
# lib64/driver, which the board setups (Ascend samples' environment pages) add by hand.
cann_environment() {
    # shellcheck disable=SC2016  # $1 and $2 expand in the child shell, on purpose
    env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        bash -c '. "$1" >/dev/null 2>&1 || exit 1
                 for dir in "$2/lib64" "$2/lib64/common" "$2/lib64/driver"; do
                     [ -d "$dir" ] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$dir
                 done
                 export LD_LIBRARY_PATH
                 env -0' isic-cann-env "$1" "$ROOT/usr/local/Ascend/driver" |
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
    if [ -z "$CANN_SET_ENV" ]; then
        note "no CANN (see above): no NPU environment"
        remove_path "$DROPIN_DIR/cann-home.conf"
        return 0
    fi
    local dump=$CANN_DUMP
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
    local dump=$1
    [ -z "$ROOT" ] || dump=${dump//"$ROOT"/}  # paths as the board will see them
    if grep -Eq '^[A-Z_0-9]+="([^"]*:)?/(home|root)/' <<<"$dump"; then
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

# systemd-run properties that rebuild the service's sandbox: [Service] lines of the unit and of
# the drop-ins written above, less what only a long-running notify service needs, and less keys
# this systemd does not know (a transient unit refuses them, where a unit file only warns).
sandbox_properties() {
    local file
    for file in "$HERE/$UNIT_NAME" "$ROOT$DROPIN_DIR"/*.conf; do
        [ -f "$file" ] || continue
        awk -v version="$SYSTEMD_VERSION" '
            BEGIN {
                n = split("User Group SupplementaryGroups EnvironmentFile Environment UMask DevicePolicy " \
                          "DeviceAllow ProtectSystem ProtectHome PrivateTmp PrivateMounts ProtectProc " \
                          "ProtectKernelTunables ProtectKernelModules ProtectKernelLogs ProtectControlGroups " \
                          "ProtectClock ProtectHostname NoNewPrivileges CapabilityBoundingSet AmbientCapabilities " \
                          "RestrictSUIDSGID LockPersonality RestrictRealtime RestrictNamespaces " \
                          "MemoryDenyWriteExecute RestrictAddressFamilies SystemCallArchitectures " \
                          "SystemCallFilter SystemCallErrorNumber LogsDirectory", keys, " ")
                for (i = 1; i <= n; i++) wanted[keys[i]] = 1
                # First systemd release with the key (systemd NEWS).
                since["PrivateMounts"] = 239; since["ProtectHostname"] = 242; since["ProtectKernelLogs"] = 244
                since["ProtectClock"] = 245; since["ProtectProc"] = 247
            }
            /^\[/ { service = ($0 == "[Service]"); next }
            service && /^[A-Za-z]+=/ {
                key = substr($0, 1, index($0, "=") - 1)
                if (key in wanted && !(key in since && version + 0 < since[key])) print
            }' "$file"
    done
}

# Which backend the first start will run ("auto" in config/atlas-200dk.toml), from the manifest installed.
report_model() {
    step "Model"
    local manifest=$REPO/models_om/isic_model/shipped/manifest.json
    if grep -q '"om"' "$manifest" 2>/dev/null; then
        note "the manifest records compiled .om files: backend auto runs them on the NPU when pyACL starts"
    else
        note "the manifest records no compiled .om: backend auto runs on ONNX Runtime (CPU) and says so in" \
             "systemctl status. For the NPU, from this checkout with CANN's toolkit: isic-model build-om" \
             "--soc-version Ascend310 (Ascend310B1/B4 on the 200I DK A2) --record, then run this installer again"
    fi
}

npu_check() {
    step "NPU check under the service's sandbox"
    if [ -z "$CANN_SET_ENV" ]; then
        note "skipped: no CANN"
        return
    fi
    if [ -n "$ROOT" ] && [ "$DRY_RUN" = 0 ]; then
        note "skipped (--root: no running systemd to start the check in)"
        return
    fi
    local properties=() line
    while IFS= read -r line; do
        properties+=(-p "$line")
    done < <(sandbox_properties)
    local command=(systemd-run --quiet --wait --pipe --collect --unit="$SERVICE-npu-check"
                   "${properties[@]}" "$VENV/bin/python" -c "$(cat "$HERE/npu-check.py")")
    if [ "$DRY_RUN" = 1 ]; then
        run "${command[@]}"
        return
    fi
    if run "${command[@]}"; then
        note "pyACL works under the service's sandbox: the station uses the NPU once the manifest records a .om"
    else
        warn "the NPU check failed under the service's sandbox (its line above names the call and code):" \
             "the station will run on ONNX Runtime (CPU). Check npu-smi info, $CANN_ENV_FILE and the" \
             "$NPU_GROUP group; details in journalctl -u $SERVICE-npu-check"
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
find_cann
choose_python
install_user
install_venv
install_config
install_cann_env
install_unit
install_udev_rules
report_model
npu_check
enable_service
step "Done"
