#!/usr/bin/env bash
# Removes network namespaces and bpffs pins left by xlb tests or labs whose process is gone (a run killed with
# SIGKILL cannot clean up after itself). Names are xlbt-<role>-<pid>-<n>; processes still inside
# such a namespace are killed first.
set -u
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^xlbt-' || true); do
  pid=$(echo "$ns" | awk -F- '{print $(NF-1)}')
  if [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; then
    for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  fi
done
# Pin directories of agents started by tests (/sys/fs/bpf/xlbt-pins-<pid>-<n>).
for dir in /sys/fs/bpf/xlbt-*; do
  [ -d "$dir" ] || continue
  pid=$(basename "$dir" | awk -F- '{print $(NF-1)}')
  if [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; then
    rm -rf "$dir"
  fi
done
