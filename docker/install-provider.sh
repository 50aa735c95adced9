#!/usr/bin/env bash
# Install airflow-provider-upstox from a source tree, pinned by the project's constraints file.
#
# Usage: install-provider.sh SOURCE_DIR CONSTRAINTS_FILE [EXTRAS]
#
# This is the one install step of docker/Dockerfile. It lives in a script rather than in the
# Dockerfile's RUN line so that tests/docker/test_image_install.py can run exactly the same command
# in a clean virtualenv: there is no Docker engine on the build machines, and this is the part of the
# image build that can actually break (dependency resolution).
#
# It installs with whichever `python` is first on PATH: in the image that is the airflow user's
# Python; in the test, the clean virtualenv's. apache-airflow is named explicitly, at the version of
# the base image (AIRFLOW_VERSION, set by the official image) so that pip reports a conflict instead of
# silently up- or downgrading Airflow, as Airflow's "Building the image" guide recommends. Outside the
# image AIRFLOW_VERSION falls back to the constraints file's apache-airflow pin.
#
# UPSTOX_PIP_CHECK=strict (default) makes the install fail when `pip check` finds a broken
# requirement among the installed distributions; UPSTOX_PIP_CHECK=warn only prints them.
set -euo pipefail

if [[ $# -lt 2 || $# -gt 3 ]]; then
    echo "usage: $0 SOURCE_DIR CONSTRAINTS_FILE [EXTRAS]" >&2
    exit 2
fi
source_dir="$1"
constraints="$2"
extras="${3:-}"

pinned="$(sed -n 's/^apache-airflow==\([^[:space:]]*\).*$/\1/p' "$constraints")"
if [[ -z "$pinned" ]]; then
    echo "error: $constraints has no apache-airflow pin" >&2
    exit 2
fi
airflow_version="${AIRFLOW_VERSION:-$pinned}"
if [[ "$airflow_version" != "$pinned" ]]; then
    echo "error: base image has Airflow $airflow_version but $constraints pins apache-airflow==$pinned;" >&2
    echo "       change the FROM line of docker/Dockerfile or regenerate the constraints" >&2
    exit 2
fi

target="$source_dir"
if [[ -n "$extras" ]]; then
    target="${source_dir}[${extras}]"
fi

set -x
python -m pip install --no-cache-dir --disable-pip-version-check \
    --constraint "$constraints" \
    "apache-airflow==${airflow_version}" \
    "$target"
set +x

if ! python -m pip check --disable-pip-version-check; then
    if [[ "${UPSTOX_PIP_CHECK:-strict}" == "warn" ]]; then
        echo "warning: pip check found broken requirements (UPSTOX_PIP_CHECK=warn)" >&2
    else
        echo "error: pip check found broken requirements; set build arg UPSTOX_PIP_CHECK=warn to go on" >&2
        exit 1
    fi
fi
python -c 'from importlib.metadata import version as v; print("installed airflow-provider-upstox", v("airflow-provider-upstox"))'
