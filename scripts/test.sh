#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests that start the real
# ringsqd binary and drive it with real NSQ clients (pynsq, gnsq) and raw wire
# bytes. Sets up its own Python virtualenv (.venv) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== build (release; the first build takes about 5 minutes on 2 cores)"
cargo build --release --locked

echo "== unit tests"
cargo test --release --locked

echo "== python clients"
if [ ! -x .venv/bin/python ] || ! cmp -s tests/requirements.txt .venv/.requirements; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
  cp tests/requirements.txt .venv/.requirements
fi

echo "== integration tests"
export RINGSQD_BIN="$PWD/target/release/ringsqd"
exec .venv/bin/python -m pytest tests/integration -q -p no:cacheprovider "$@"
