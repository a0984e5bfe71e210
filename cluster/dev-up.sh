#!/usr/bin/env bash
# Local dev cluster for trying `nstray submit`: a Ray head (dashboard + Jobs API) and a SeaweedFS
# S3 endpoint, both on 127.0.0.1. Stop them with cluster/dev-down.sh.
#   cluster/dev-up.sh && eval "$(cluster/dev-up.sh --env)"
# Ports and state dir can be changed with NSTRAY_DEV_{S3_PORT,RAY_PORT,DASHBOARD_PORT,DIR}.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.venv/bin"
dir="${NSTRAY_DEV_DIR:-$root/.dev}"
s3_port="${NSTRAY_DEV_S3_PORT:-8333}"
ray_port="${NSTRAY_DEV_RAY_PORT:-6380}"
dash_port="${NSTRAY_DEV_DASHBOARD_PORT:-8265}"
base=$((s3_port + 100))   # SeaweedFS's internal master/filer/volume ports, kept off the defaults

env_lines() {
  cat <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port
export AWS_ACCESS_KEY_ID=\${AWS_ACCESS_KEY_ID:-dev}
export AWS_SECRET_ACCESS_KEY=\${AWS_SECRET_ACCESS_KEY:-devsecret}
export AWS_REGION=us-east-1
export RAY_ADDRESS=http://127.0.0.1:$dash_port
ENV
}
if [ "${1:-}" = "--env" ]; then env_lines; exit 0; fi

mkdir -p "$dir/s3" "$dir/ray"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-dev}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-devsecret}"
if [ -f "$dir/weed.pid" ] && kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null; then
  echo "S3 already running (pid $(cat "$dir/weed.pid"))"
else
  nohup "$bin/weed" mini -dir="$dir/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -s3.port="$s3_port" \
    -master.port="$base" -filer.port=$((base + 1)) -volume.port=$((base + 2)) -admin.port=$((base + 3)) \
    >"$dir/weed.log" 2>&1 &
  echo $! >"$dir/weed.pid"
fi
RAY_AUTH_MODE=disabled "$bin/ray" start --head --port="$ray_port" --dashboard-host=127.0.0.1 \
  --dashboard-port="$dash_port" --temp-dir="$dir/ray" --disable-usage-stats >"$dir/ray.log" 2>&1 \
  || { cat "$dir/ray.log"; exit 1; }
for i in $(seq 150); do
  (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null && break
  kill -0 "$(cat "$dir/weed.pid")" 2>/dev/null || { tail -5 "$dir/weed.log"; echo "S3 server failed to start (see $dir/weed.log)"; exit 1; }
  [ "$i" = 150 ] && { echo "S3 server not listening on $s3_port after 30 s (see $dir/weed.log)"; exit 1; }
  sleep 0.2
done
echo "Ray dashboard + Jobs API: http://127.0.0.1:$dash_port   S3: http://127.0.0.1:$s3_port   state: $dir"
echo "Use them with:  eval \"\$($0 --env)\"  then  nstray submit job.yaml --address http://127.0.0.1:$dash_port"
