#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz) and runs each over its committed corpus for
# SECONDS (default 25), one after the other. Exits non-zero if any target crashes, leaks past
# the memory limit or hangs; the input is kept in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# New inputs the fuzzer finds go to a scratch directory and are dropped, so a run leaves the
# tree as it was; XLB_FUZZ_GROW=1 adds them to fuzz/corpus/<target>/ instead (minimize before
# committing: see DEVELOPERS.md). Extra libFuzzer flags: XLB_FUZZ_FLAGS.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

seconds=${1:-25}
shift || true
all=(config bgp_message bgp_session bfd proxy_protocol admin)
targets=("${@:-${all[@]}}")

log() { printf '[fuzz] %s\n' "$*" >&2; }

# cargo-fuzz needs -Zsanitizer. The nightly toolchains of our machines predate aya's minimum
# Rust (1.98), so the pinned toolchain builds the fuzz targets with its unstable flags unlocked
# (RUSTC_BOOTSTRAP, as lb-userspace's build.rs does for the eBPF sub-build); it ships the ASan
# runtime. No eBPF object is needed: AYA_BUILD_SKIP embeds empty ones.
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
command -v cargo-fuzz >/dev/null || { log "cargo-fuzz is missing: run scripts/setup.sh"; exit 1; }
log "building ${targets[*]} (Rust $toolchain, ASan)"
# The fuzz build (ASan, a dependency tree of its own) is slow from scratch: its target directory
# lives outside the checkout, so that a fresh clone (CI) reuses it.
export CARGO_TARGET_DIR=${XLB_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/xlb/fuzz-target}
(cd fuzz && AYA_BUILD_SKIP=1 RUSTC_BOOTSTRAP=1 cargo "+$toolchain" fuzz build)
bin=$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  [ -d "$corpus" ] || { log "no corpus $corpus"; exit 1; }
  mkdir -p "fuzz/artifacts/$target" "$scratch/$target"
  dirs=("$scratch/$target" "$corpus")
  [ "${XLB_FUZZ_GROW:-0}" = 1 ] && dirs=("$corpus")
  dict=()
  [ -f "fuzz/dict/$target.dict" ] && dict=("-dict=fuzz/dict/$target.dict")
  log "$target: ${seconds}s"
  # -timeout: one input taking seconds is a hang (a bug); -rss_limit_mb: so is a memory blow-up.
  # shellcheck disable=SC2086
  if ASAN_OPTIONS=detect_odr_violation=0 "$bin/$target" "${dirs[@]}" "${dict[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$target/" ${XLB_FUZZ_FLAGS:-} >"$scratch/$target.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$target.log")
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$scratch/$target.log" | tail -n 1)
    log "$target: ok, $runs runs, $cov"
  else
    tail -n 60 "$scratch/$target.log" >&2
    log "$target: FAILED; input in fuzz/artifacts/$target/"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  log "crashed: ${failed[*]}"
  exit 1
fi
log "all targets ran ${seconds}s without a crash"
