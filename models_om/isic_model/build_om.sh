#!/bin/sh
# Compile the shipped ISiC-Net graphs to Ascend .om files on a CANN host or on the board itself.
# Usage: models_om/isic_model/build_om.sh [SOC_VERSION ...]   (default Ascend310; Ascend310B1/B4 for the 200I DK A2)
# Sources CANN's environment when it is installed in the default place, then runs `isic-model build-om`,
# which adds TE_PARALLEL_COMPILER=1 MAX_COMPILE_CORE_NUMBER=1 on aarch64 and records the .om in the
# manifest when a single SoC is given.
set -eu
CANN_ENV=/usr/local/Ascend/ascend-toolkit/set_env.sh
if ! command -v atc >/dev/null 2>&1 && [ -f "$CANN_ENV" ]; then
    # shellcheck disable=SC1090
    . "$CANN_ENV"
fi
[ "$#" -gt 0 ] || set -- Ascend310
args=""
for soc in "$@"; do args="$args --soc-version $soc"; done
[ "$#" -eq 1 ] && args="$args --record"
# shellcheck disable=SC2086
exec isic-model build-om $args
