#!/usr/bin/env bash
# Runs examples/utility/opendp_polars.py — the utility benchmark's OpenDP side — in its own
# virtual environment under target/opendp-venv, created on the first run with a pinned
# `opendp[polars]` from PyPI. Arguments are passed to the script (ROWS, RUNS; see its --help).
#
#   examples/utility/run_opendp.sh 10000000 20
#
# The Parquet file is the one `bench_dp_aggregate` and `bench_utility` generate into
# target/bench-data/ROWS/; generate it first with either of them (or `veil demo`'s generator).
set -euo pipefail

# OpenDP's Python release of the same version as the `opendp` crate Veil links (Cargo.toml).
OPENDP_VERSION=0.16.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/target/opendp-venv"
stamp="$venv/.opendp-$OPENDP_VERSION"

if [[ ! -f "$stamp" ]]; then
    echo "creating $venv with opendp[polars]==$OPENDP_VERSION (once)…" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet "opendp[polars]==$OPENDP_VERSION" pyarrow
    touch "$stamp"
fi
exec "$venv/bin/python" "$here/opendp_polars.py" --root "$root" "$@"
