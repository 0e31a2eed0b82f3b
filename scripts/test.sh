#!/usr/bin/env bash
# The test command of README.md: installs what the tests need on a fresh
# machine, then runs them. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --release
