#!/usr/bin/env bash
# Stop what cluster/dev-up.sh started (this Ray head only, and its S3 server).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${NSTRAY_DEV_DIR:-$root/.dev}"
# `ray stop` would stop every Ray on the machine; kill only this head's processes by its temp dir.
for _ in $(seq 50); do
  pkill -f -- "$dir/ray" 2>/dev/null || break
  sleep 0.2
done
pkill -9 -f -- "$dir/ray" 2>/dev/null
if [ -f "$dir/weed.pid" ]; then
  pid="$(cat "$dir/weed.pid")"
  kill "$pid" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null
  rm -f "$dir/weed.pid"
fi
echo "stopped dev cluster in $dir"
