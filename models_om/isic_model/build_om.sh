#!/bin/sh
# Compile the shipped ISiC-Net graphs to Ascend .om files on a CANN host or on the board itself.
# Usage: models_om/isic_model/build_om.sh [SOC_VERSION ...]   (default Ascend310; Ascend310B1/B4 for the 200I DK A2)
# Run it from the checkout: `--record` then writes the checkout's manifest. Sources CANN's environment
# when `atc` is not on PATH (the toolkit's places: CANN >= 8.5 in Ascend/cann, older in
# Ascend/ascend-toolkit, as root under /usr/local or as the user under $HOME), then runs
# `isic-model build-om`, which adds TE_PARALLEL_COMPILER=1 MAX_COMPILE_CORE_NUMBER=1 on aarch64 and
# records the .om in the manifest when a single SoC is given.
set -eu
if ! command -v atc >/dev/null 2>&1; then
    for CANN_ENV in /usr/local/Ascend/cann/set_env.sh /usr/local/Ascend/ascend-toolkit/set_env.sh \
                    "$HOME/Ascend/cann/set_env.sh" "$HOME/Ascend/ascend-toolkit/set_env.sh"; do
        if [ -f "$CANN_ENV" ]; then
            # shellcheck disable=SC1090
            . "$CANN_ENV"
            break
        fi
    done
fi
[ "$#" -gt 0 ] || set -- Ascend310
args=""
for soc in "$@"; do args="$args --soc-version $soc"; done
[ "$#" -eq 1 ] && args="$args --record"
# shellcheck disable=SC2086
exec isic-model build-om $args
