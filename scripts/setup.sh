#!/usr/bin/env bash
# Idempotent machine setup for building and testing xlb.
#  - the pinned Rust toolchain (rust-toolchain.toml) with rust-src, rustfmt, clippy
#  - bpf-linker built against that toolchain's own libLLVM (a mismatch fails later as "Invalid record")
#  - cargo-fuzz for the fuzz targets (scripts/fuzz.sh)
#  - the Debian packages the tests and the lab use
# When everything is present it returns in a few seconds.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

BPF_LINKER_VERSION=0.13.0
CARGO_FUZZ_VERSION=0.13.2
# systemd: systemd-analyze, for tests/systemd_unit.rs. prometheus: promtool, for
# tests/monitoring.rs (the alert rules in deploy/prometheus). (dpkg-deb, for `cargo xtask deb`,
# is in dpkg itself.) chromium-headless-shell: the browser tests/netns_status_page.rs loads the
# status page in. nftables: the baseline `cargo xtask bench live` compares with. pkg-config,
# libfontconfig1-dev, libfreetype-dev: the fonts of that bench's chart (plotters). python3-grpcio:
# the real gRPC server the gRPC health-check tests probe (Debian's /usr/bin/python3).
DEBIAN_PACKAGES=(iproute2 bird2 curl python3 ethtool openssl wrk nghttp2-client nginx-light systemd prometheus chromium-headless-shell nftables pkg-config libfontconfig1-dev libfreetype-dev python3-grpcio redis-server)

log() { printf '[setup] %s\n' "$*" >&2; }

toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
[ -n "$toolchain" ] || { log "rust-toolchain.toml has no channel"; exit 1; }

# 1. Toolchain. RUSTUP_AUTO_INSTALL=0 on these machines, so install explicitly.
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
  || ! [ -d "$(rustup run "$toolchain" rustc --print sysroot)/lib/rustlib/src/rust/library" ] \
  || ! rustup run "$toolchain" cargo clippy --version >/dev/null 2>&1 \
  || ! rustup run "$toolchain" rustfmt --version >/dev/null 2>&1; then
  log "installing Rust $toolchain with rust-src, rustfmt, clippy"
  rustup toolchain install "$toolchain" --profile minimal -c rust-src -c rustfmt -c clippy
fi
sysroot=$(rustup run "$toolchain" rustc --print sysroot)
llvm_major=$(rustup run "$toolchain" rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[ -n "$llvm_major" ] || { log "cannot read the LLVM version of Rust $toolchain"; exit 1; }

# 2. bpf-linker, linked against the toolchain's libLLVM.
libllvm=$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*' | head -n 1)
[ -n "$libllvm" ] || { log "no libLLVM.so.* in $sysroot/lib"; exit 1; }
linker_ok() {
  command -v bpf-linker >/dev/null 2>&1 || return 1
  bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION" || return 1
  # The linker must load exactly this toolchain's libLLVM (same soname), not another LLVM.
  ldd "$(command -v bpf-linker)" 2>/dev/null | grep -q "$(basename "$libllvm") => $sysroot/lib/" \
    || ldd "$(command -v bpf-linker)" 2>/dev/null | grep -q "$(basename "$libllvm") => .*xlb-llvm" || return 1
}
if ! linker_ok; then
  prefix="${XDG_CACHE_HOME:-$HOME/.cache}/xlb-llvm/$toolchain"
  mkdir -p "$prefix/lib"
  ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
  ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
  log "building bpf-linker $BPF_LINKER_VERSION against $(basename "$libllvm") (LLVM $llvm_major)"
  LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$prefix/lib" \
    rustup run "$toolchain" cargo install --locked --force bpf-linker --version "$BPF_LINKER_VERSION" \
    --no-default-features --features "llvm-$llvm_major"
  linker_ok || { log "bpf-linker still does not resolve $(basename "$libllvm"); see ldd $(command -v bpf-linker)"; exit 1; }
fi

# 3. cargo-fuzz (scripts/fuzz.sh builds with the pinned toolchain; see there).
if ! cargo-fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  rustup run "$toolchain" cargo install --locked --force cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

# 4. Debian packages.
missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || log "apt-get update failed; trying the install anyway"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # bird2's package starts a system daemon; the lab and tests run their own instances.
  systemctl disable --now bird 2>/dev/null || true
  # Likewise nginx (the L7 bench runs its own), and prometheus (only its promtool is used).
  systemctl disable --now nginx 2>/dev/null || true
  systemctl disable --now prometheus 2>/dev/null || true
  # And redis-server: the global-limit tests and the lab run theirs inside a namespace.
  systemctl disable --now redis-server 2>/dev/null || true
fi

log "ready: Rust $toolchain (LLVM $llvm_major), $(bpf-linker --version), $(cargo-fuzz --version)"
