#!/usr/bin/env bash
# The lab (README's main command): an edge in network namespaces — client, this xlb node with
# XDP attached, three backends running real TCP and UDP servers (and `xlb decap` for dsr-ipip) —
# configured by config/lab.yaml. It drives traffic through every VIP, prints where it went, each
# node's status and a summary of the logs, and tears everything down.
#
#   ./scripts/lab.sh                 run, print, tear down
#   ./scripts/lab.sh --verbose       the agents' logs as they run, full status, BIRD's protocols
#   ./scripts/lab.sh --keep          leave it running (Ctrl-C tears it down), print how to poke at it
#   ./scripts/lab.sh --requests 1000
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "lab.sh needs root (namespaces, XDP)" >&2; exit 1; }

./scripts/setup.sh
# Whatever happens to the run (failure, Ctrl-C, kill), namespaces it leaves are removed.
trap ./scripts/sweep-netns.sh EXIT
./scripts/sweep-netns.sh
cargo build --locked --release -q -p lb-userspace --bin xlb
XLB_BIN="$root/target/release/xlb" cargo xtask lab "$@"
