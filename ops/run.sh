#!/usr/bin/env bash
# `make run`: Redis (AOF), the API (gunicorn + uvicorn workers), a Celery worker, the events process,
# Flower and Prometheus (when installed; PROMETHEUS=0 leaves it out), all in the foreground. Ctrl-C stops
# them all. State and logs go under VAR_DIR (default var/).
set -euo pipefail
cd "$(dirname "$0")/.."

export PORT=${PORT:-8000}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
FLOWER_PORT=${FLOWER_PORT:-5555}
export WORKER_METRICS_PORT=${WORKER_METRICS_PORT:-9540}
# The API and the worker each make their own metrics directory; a shared one would count samples twice.
unset PROMETHEUS_MULTIPROC_DIR AGENTIC_OWN_METRICS_DIR
WORKER_AUTOSCALE=${WORKER_AUTOSCALE:-8,2}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
VAR=${VAR_DIR:-var}
mkdir -p "$VAR/redis" "$VAR/log"
VAR=$(cd "$VAR" && pwd)

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "run: stopping..."
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "run: stopped."
  exit 0
}
trap stop INT TERM EXIT

start() {  # name, command...
  local name=$1
  shift
  "$@" >"$VAR/log/$name.log" 2>&1 &
  pids+=($!)
}

redis_host_port=${REDIS_URL#redis://}
redis_host_port=${redis_host_port%%/*}
redis_host_port=${redis_host_port##*@}
redis_port=${redis_host_port##*:}
if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  echo "run: using the Redis already answering at $redis_host_port"
elif [ "${redis_host_port%%:*}" = "127.0.0.1" ] || [ "${redis_host_port%%:*}" = "localhost" ]; then
  start redis redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$VAR/redis" \
    --appendonly yes --appendfsync everysec --save "" --maxmemory-policy noeviction
  for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
else
  echo "run: Redis at $REDIS_URL does not answer" >&2
  exit 1
fi

if [ -z "${FLOWER_BASIC_AUTH:-}" ]; then
  FLOWER_BASIC_AUTH="admin:$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(12))')"
  echo "run: FLOWER_BASIC_AUTH not set; Flower's login for this run is $FLOWER_BASIC_AUTH"
fi

start events .venv/bin/python -m events
start worker .venv/bin/celery -A workers worker -Q "${AGENT_QUEUE:-agents}" --autoscale="$WORKER_AUTOSCALE" -l INFO
start api .venv/bin/gunicorn -c ops/gunicorn.conf.py api.asgi:app
start flower .venv/bin/celery -A workers flower --address=127.0.0.1 --port="$FLOWER_PORT" \
  --basic-auth="$FLOWER_BASIC_AUTH"

for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/api/v1/monitoring/live" >/dev/null 2>&1 && break
  sleep 0.2
done

prometheus_line="Prometheus not installed (apt-get install prometheus); see ops/README.md"
if [ "${PROMETHEUS:-1}" != "0" ] && command -v prometheus >/dev/null; then
  # Its config, rules and scrape secrets (a readonly user's key, Flower's password) for this run's ports.
  .venv/bin/agentic prometheus-config --out "$VAR/prometheus" --api "127.0.0.1:$PORT" \
    --workers "127.0.0.1:$WORKER_METRICS_PORT" --flower "127.0.0.1:$FLOWER_PORT" \
    --flower-user "${FLOWER_BASIC_AUTH%%:*}" --flower-password "${FLOWER_BASIC_AUTH#*:}" \
    --self "127.0.0.1:$PROMETHEUS_PORT" >/dev/null
  start prometheus prometheus --config.file="$VAR/prometheus/prometheus.yml" \
    --storage.tsdb.path="$VAR/prometheus/data" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
  prometheus_line="http://127.0.0.1:$PROMETHEUS_PORT   (scrapes the API, the worker and Flower)"
fi
cat <<TXT

  API        http://127.0.0.1:$PORT/api/v1/health     docs: http://127.0.0.1:$PORT/docs
  Metrics    http://127.0.0.1:$PORT/api/v1/monitoring/metrics (API key with metrics:read)
             http://127.0.0.1:$WORKER_METRICS_PORT/metrics (the worker's pool)
  Flower     http://127.0.0.1:$FLOWER_PORT   (basic auth from FLOWER_BASIC_AUTH)
  Prometheus $prometheus_line
  Grafana    provisioning and dashboard in ops/grafana (ops/README.md)
  Redis      $REDIS_URL
  Logs       $VAR/log/*.log

  Make a key:  .venv/bin/agentic users create alice --role user
  Ctrl-C stops everything.
TXT

wait -n "${pids[@]}" || true
echo "run: a process exited; see $VAR/log/. Stopping the rest." >&2
