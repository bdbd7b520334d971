# shellcheck shell=bash
# Shared by run.sh and fault.sh: settings, process bookkeeping and the demo's Celery workers.
#
# Every process the demo starts runs in its own session (setsid), so its pid is also its process
# group id: stopping the group takes a prefork worker's pool children with it, and Ctrl-C in the
# terminal reaches run.sh only, which then stops the groups in order. The pids are kept in
# $DEMO_DIR/run/<name>.pid, so fault.sh can act on them and restarted workers are still cleaned up.

DEMO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEMO_DIR=${DEMO_DIR:-$DEMO_ROOT/.demo}
case $DEMO_DIR in /*) ;; *) DEMO_DIR=$PWD/$DEMO_DIR ;; esac
export DEMO_DIR
RUN_DIR=$DEMO_DIR/run
LOG_DIR=$DEMO_DIR/logs
APP_LOG=$LOG_DIR/app/celery-app.log
PY=/usr/bin/python3 # Debian's, which has celery; a pyenv python3 first on PATH does not

say() { printf 'demo: %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# Ports: fixed defaults so bookmarks keep working, each overridable.
DEMO_REDIS_PORT=${DEMO_REDIS_PORT:-6379}
DEMO_EXPORTER_PORT=${DEMO_EXPORTER_PORT:-9808}
DEMO_PROMETHEUS_PORT=${DEMO_PROMETHEUS_PORT:-9090}
DEMO_ALERTMANAGER_PORT=${DEMO_ALERTMANAGER_PORT:-9093}
DEMO_WEBHOOK_PORT=${DEMO_WEBHOOK_PORT:-9099}
# DEMO_BROKER=rabbitmq (make demo BROKER=rabbitmq) runs the broker on a local rabbitmq-server;
# Redis stays for the Django cache.
DEMO_BROKER=${DEMO_BROKER:-redis}
DEMO_AMQP_PORT=${DEMO_AMQP_PORT:-5672}
DEMO_RABBITMQ_MGMT_PORT=${DEMO_RABBITMQ_MGMT_PORT:-15672}
# The node's Erlang distribution port and its own epmd's port (the node must not share the
# system's epmd on 4369).
DEMO_RABBITMQ_DIST_PORT=${DEMO_RABBITMQ_DIST_PORT:-25672}
DEMO_EPMD_PORT=${DEMO_EPMD_PORT:-4672}
RABBITMQ_NODE=demo@localhost

# The seed's layout: broker on DB 1, Django cache (the Zep breaker) on DB 0.
broker_url() {
  case $DEMO_BROKER in
    rabbitmq) echo "amqp://guest:guest@127.0.0.1:$DEMO_AMQP_PORT//" ;;
    redis) echo "redis://127.0.0.1:$DEMO_REDIS_PORT/1" ;;
    *) die "DEMO_BROKER (BROKER) must be redis or rabbitmq, not $DEMO_BROKER" ;;
  esac
}
BROKER_URL=$(broker_url)
CACHE_URL=redis://127.0.0.1:$DEMO_REDIS_PORT/0
DEMO_QUEUES=chat,default,background,notifications,dlq
WORKERS=(chat default background)


# celery_env prints the environment of every Python process of the demo's Celery app.
celery_env() {
  printf '%s\n' \
    "PYTHONPATH=$DEMO_ROOT/test:$DEMO_ROOT/test/demo" \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    "CELERY_BROKER_URL=$BROKER_URL" \
    CELERY_DEFAULT_QUEUE=default CELERY_ACKS_LATE=1 CELERY_REJECT_ON_WORKER_LOST=1 \
    CELERY_UNBUFFERED_TASK_EVENTS="${DEMO_UNBUFFERED_TASK_EVENTS:-1}" \
    "CELERYAPP_LOG_FILE=$APP_LOG" "DEMO_CACHE_URL=$CACHE_URL"
}

# celery_run CMD... runs CMD with the app's environment.
celery_run() {
  local -a envs
  mapfile -t envs < <(celery_env)
  env "${envs[@]}" "$@"
}

# start_celery_proc NAME CMD... is start_proc with the app's environment (env execs CMD, so the
# recorded pid is CMD's).
start_celery_proc() {
  local name=$1 envs
  shift
  mapfile -t envs < <(celery_env)
  start_proc "$name" env "${envs[@]}" "$@"
}

# start_proc NAME CMD... starts CMD in its own session, output to $LOG_DIR/NAME.log.
start_proc() {
  local name=$1
  shift
  # From a script without job control the background child is not a group leader, so setsid
  # does not fork and $! is the session's (and group's) id.
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  # Not this shell's job any more: no "Killed" notice from bash when a fault button kills it.
  disown $!
}

pid_of() { [ -s "$RUN_DIR/$1.pid" ] && cat "$RUN_DIR/$1.pid"; }

alive() {
  local pid
  pid=$(pid_of "$1") || return 1
  kill -0 "$pid" 2>/dev/null
}

# signal_group NAME SIG signals NAME's whole process group (or the pid if it has none).
signal_group() {
  local pid
  pid=$(pid_of "$1") || return 0
  kill -s "$2" -- "-$pid" 2>/dev/null || kill -s "$2" "$pid" 2>/dev/null || true
}

# group_alive NAME: any process of NAME's group still running.
group_alive() {
  local pid
  pid=$(pid_of "$1") || return 1
  kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null
}

# start_worker NAME starts one of the seed-shaped workers and records it.
start_worker() {
  local name=$1 queues pool
  case $name in
    chat) queues=chat pool=threads ;;
    default) queues=default pool=threads ;;
    background) queues=background,notifications,dlq pool=prefork ;;
    *) die "unknown worker $name (chat, default, background)" ;;
  esac
  rm -f "$RUN_DIR/worker-$name.down"
  # A restart must not find the previous run's "ready." line.
  if [ -s "$LOG_DIR/worker-$name.log" ]; then
    cat "$LOG_DIR/worker-$name.log" >>"$LOG_DIR/worker-$name.previous.log"
    : >"$LOG_DIR/worker-$name.log"
  fi
  # Node names as with `celery worker -n <name>@%h`; -E as the seed's worker_send_task_events.
  start_celery_proc "worker-$name" "$PY" -m celery -A celeryapp.app worker \
    --hostname "$name@%h" --queues "$queues" --pool "$pool" --concurrency 4 \
    --loglevel INFO --task-events --without-mingle --without-gossip
}

# wait_worker_ready NAME TIMEOUT waits for Celery's "<node> ready." line.
wait_worker_ready() {
  local name=$1 timeout=$2 i
  for ((i = 0; i < timeout * 5; i++)); do
    grep -q ' ready\.' "$LOG_DIR/worker-$name.log" 2>/dev/null && return 0
    alive "worker-$name" || break
    sleep 0.2
  done
  tail -n 30 "$LOG_DIR/worker-$name.log" >&2 2>/dev/null || true
  return 1
}

# http_get URL prints the body of a 2xx answer within 5s (Python: curl is not on every Debian).
http_get() {
  "$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null
}

# http_ok URL: a 2xx answer.
http_ok() { http_get "$1" >/dev/null; }

# wait_http NAME URL TIMEOUT
wait_http() {
  local name=$1 url=$2 timeout=$3 i
  for ((i = 0; i < timeout * 5; i++)); do
    http_ok "$url" && return 0
    alive "$name" || break
    sleep 0.2
  done
  say "$name did not answer $url within ${timeout}s; last lines of $LOG_DIR/$name.log:" >&2
  tail -n 30 "$LOG_DIR/$name.log" >&2 2>/dev/null || true
  return 1
}

# rabbitmq_env prints the environment of the demo's rabbitmq-server and rabbitmqctl: its own node
# name, ports and data directory (test/harness/rabbitmq.go does the same for the tests).
rabbitmq_env() {
  local d=$DEMO_DIR/rabbitmq
  printf '%s\n' "RABBITMQ_NODENAME=$RABBITMQ_NODE" "RABBITMQ_NODE_PORT=$DEMO_AMQP_PORT" \
    "RABBITMQ_DIST_PORT=$DEMO_RABBITMQ_DIST_PORT" "ERL_EPMD_PORT=$DEMO_EPMD_PORT" \
    "RABBITMQ_MNESIA_BASE=$d/mnesia" "RABBITMQ_LOG_BASE=$d/log" "RABBITMQ_ENABLED_PLUGINS_FILE=$d/enabled_plugins" \
    "RABBITMQ_PID_FILE=$d/pid" "RABBITMQ_CONFIG_FILE=$d/rabbitmq" "RABBITMQ_FEATURE_FLAGS_FILE=$d/feature_flags" \
    "RABBITMQ_PLUGINS_EXPAND_DIR=$d/plugins-expand"
}

rabbitmqctl_demo() {
  local -a envs
  mapfile -t envs < <(rabbitmq_env)
  env "${envs[@]}" rabbitmqctl -n "$RABBITMQ_NODE" "$@"
}
