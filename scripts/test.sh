#!/usr/bin/env bash
# The test command: setup, formatting, lints (host crates and the eBPF crate), build, all tests.
# Data-plane tests need root; under CI (CI set) a skipped root-only test fails the run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/setup.sh
# Namespaces a killed earlier run left behind would only collide by accident; remove them, and
# whatever this run leaves if it is killed.
./scripts/sweep-netns.sh
trap ./scripts/sweep-netns.sh EXIT

step() { printf '\n== %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (host crates)"
cargo clippy --all-targets --locked -- -D warnings

step "cargo clippy (lb-ebpf, bpfel-unknown-none)"
RUSTC_BOOTSTRAP=1 cargo clippy --locked -p lb-ebpf --release --target bpfel-unknown-none -Z build-std=core -- -D warnings

step "cargo build (the netns tests run the xlb binary)"
cargo build --all-targets --locked

step "cargo test"
cargo test --all-targets --locked

step "fuzz targets, 25 s each (scripts/fuzz.sh)"
./scripts/fuzz.sh 25

step "all tests passed"
