#!/usr/bin/env bash
# `make demo`: a Celery system shaped like the seed's, under load, watched by celery_exporter, with
# Prometheus evaluating the bundle's rules and Alertmanager receiving the alerts. All local
# processes on 127.0.0.1, state under .demo/ (wiped at each start). Ctrl-C stops everything.
#
# Started here, each in its own process group:
#   redis-server                     broker on DB 1, Django cache (the Zep breaker) on DB 0
#   3 Celery workers (Debian's)      chat: threads x4, default: threads x4,
#                                    background,notifications,dlq: prefork x4
#   test/demo/loadgen.py             the seed's task mix, zep_call_error and breaker trips now and then
#   ./celery_exporter                with test/demo/celery_exporter.yml.in as its --config.file
#   prometheus                       the rules rendered with test/demo/rules-overrides.yaml (short `for`)
#   prometheus-alertmanager          the shipped deploy/alertmanager/alertmanager.yml (routing, grouping,
#                                    inhibitions), every receiver replaced by test/demo/webhook.py
#
# Environment:
#   DEMO_DIR                state directory (default .demo)
#   DEMO_REDIS_PORT=6379 DEMO_EXPORTER_PORT=9808 DEMO_PROMETHEUS_PORT=9090
#   DEMO_ALERTMANAGER_PORT=9093 DEMO_WEBHOOK_PORT=9099
#   DEMO_BROKER=rabbitmq     the broker on a local rabbitmq-server (make demo BROKER=rabbitmq), on
#                           DEMO_AMQP_PORT=5672 with its management API on DEMO_RABBITMQ_MGMT_PORT=15672,
#                           DEMO_RABBITMQ_DIST_PORT=25672 (Erlang distribution), DEMO_EPMD_PORT=4672
#   HEADLESS=1              no live alert feed in the terminal (for tests and CI)
#   DEMO_DURATION=N         stop by itself after N seconds of running (0: until Ctrl-C)
#   DEMO_HEAL_AFTER=N       restart a worker N seconds after it died (default 180; 0: never)
#   CELERY_EXPORTER_BIN     the exporter binary (default ./celery_exporter, built when missing)
#   DEMO_RATE, DEMO_LONG_CHAT, DEMO_PREF_FAIL, DEMO_ZEP_ERROR_EVERY, DEMO_BREAKER_EVERY,
#   DEMO_BREAKER_TTL, DEMO_SEED    the load (see test/demo/loadgen.py)
#   DEMO_UNBUFFERED_TASK_EVENTS=0  Celery's own task-event buffering, which loses events on the threads
#                           pool (celery/celery#10434): CeleryTaskEventsLost then fires
# Fault buttons while it runs: test/demo/fault.sh (make demo-kill-worker, demo-trip-breaker, ...).
set -euo pipefail

# shellcheck source=test/demo/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HEADLESS=${HEADLESS:-0}
DEMO_DURATION=${DEMO_DURATION:-0}
DEMO_HEAL_AFTER=${DEMO_HEAL_AFTER:-180}
EXPORTER_BIN=${CELERY_EXPORTER_BIN:-$DEMO_ROOT/celery_exporter}
# Start order (Prometheus last: no alerts about a system still starting); stopped all at once,
# leftovers killed after STOP_GRACE seconds.
SERVICES=(redis exporter worker-chat worker-default worker-background loadgen webhook alertmanager prometheus)
STOP_GRACE=10
if [ "$DEMO_BROKER" = rabbitmq ]; then
  SERVICES=(rabbitmq "${SERVICES[@]}")
fi

# --- set-up -----------------------------------------------------------------------------------
"$DEMO_ROOT/test/deps.sh"
command -v go >/dev/null 2>&1 || die "go is not on PATH: install Go 1.26 (https://go.dev/dl/) and run again"
if [ ! -x "$EXPORTER_BIN" ]; then
  say "building $EXPORTER_BIN (make build)"
  make -C "$DEMO_ROOT" --no-print-directory build
fi
[ -x "$EXPORTER_BIN" ] || die "no exporter binary at $EXPORTER_BIN"

mkdir -p "$RUN_DIR"
for f in "$RUN_DIR"/*.pid; do
  [ -e "$f" ] || continue
  name=$(basename "$f" .pid)
  if group_alive "$name"; then
    die "a demo already runs in $DEMO_DIR ($name, pid $(pid_of "$name")); stop it first, or set DEMO_DIR and the DEMO_*_PORT variables to run a second one"
  fi
done

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports=(DEMO_REDIS_PORT DEMO_EXPORTER_PORT DEMO_PROMETHEUS_PORT DEMO_ALERTMANAGER_PORT DEMO_WEBHOOK_PORT)
[ "$DEMO_BROKER" = rabbitmq ] && ports+=(DEMO_AMQP_PORT DEMO_RABBITMQ_MGMT_PORT DEMO_RABBITMQ_DIST_PORT DEMO_EPMD_PORT)
for var in "${ports[@]}"; do
  if port_busy "${!var}"; then
    die "port ${!var} on 127.0.0.1 is in use; pick another with $var=<port> (e.g. $var=$((${!var} + 10000)))"
  fi
done

# A fresh start: only the demo's own sub-directories are removed, never DEMO_DIR itself.
rm -rf "${RUN_DIR:?}" "${LOG_DIR:?}" "$DEMO_DIR/redis" "$DEMO_DIR/rabbitmq" "$DEMO_DIR/prometheus" "$DEMO_DIR/alertmanager" "$DEMO_DIR/render"
mkdir -p "$RUN_DIR" "$LOG_DIR/app" "$DEMO_DIR/redis" "$DEMO_DIR/prometheus" "$DEMO_DIR/alertmanager"
: >"$APP_LOG"

say "rendering the alert rules with the demo's short durations (test/demo/rules-overrides.yaml)"
(
  cd "$DEMO_ROOT"
  go run ./test/demo/rulesconfig -base rules/config.yaml -overrides test/demo/rules-overrides.yaml \
    -out "$DEMO_DIR/rules-config.yaml"
  go run ./rules/render -config "$DEMO_DIR/rules-config.yaml" -out "$DEMO_DIR/render" >/dev/null
)

fill() {
  sed -e "s|@REDIS_PORT@|$DEMO_REDIS_PORT|g" -e "s|@EXPORTER_PORT@|$DEMO_EXPORTER_PORT|g" \
    -e "s|@PROMETHEUS_PORT@|$DEMO_PROMETHEUS_PORT|g" -e "s|@ALERTMANAGER_PORT@|$DEMO_ALERTMANAGER_PORT|g" \
    -e "s|@WEBHOOK_PORT@|$DEMO_WEBHOOK_PORT|g" -e "s|@DEMO_DIR@|$DEMO_DIR|g" \
    "$DEMO_ROOT/test/demo/$1.in" >"$DEMO_DIR/$1"
}
fill celery_exporter.yml
fill prometheus.yml
say "Alertmanager: the shipped deploy/alertmanager/alertmanager.yml, its receivers replaced by the demo's webhook"
(
  cd "$DEMO_ROOT"
  go run ./test/demo/amconfig -in deploy/alertmanager/alertmanager.yml \
    -url "http://127.0.0.1:$DEMO_WEBHOOK_PORT/alerts" -out "$DEMO_DIR/alertmanager.yml"
)
promtool check config "$DEMO_DIR/prometheus.yml" >"$LOG_DIR/promtool.log" 2>&1 ||
  { cat "$LOG_DIR/promtool.log" >&2; die "promtool rejected $DEMO_DIR/prometheus.yml or its rules"; }
amtool check-config "$DEMO_DIR/alertmanager.yml" >"$LOG_DIR/amtool.log" 2>&1 ||
  { cat "$LOG_DIR/amtool.log" >&2; die "amtool rejected $DEMO_DIR/alertmanager.yml"; }

# What fault.sh needs to find this demo.
cat >"$DEMO_DIR/env" <<EOF
DEMO_BROKER=$DEMO_BROKER
DEMO_AMQP_PORT=$DEMO_AMQP_PORT
DEMO_RABBITMQ_DIST_PORT=$DEMO_RABBITMQ_DIST_PORT
DEMO_EPMD_PORT=$DEMO_EPMD_PORT
DEMO_REDIS_PORT=$DEMO_REDIS_PORT
DEMO_EXPORTER_PORT=$DEMO_EXPORTER_PORT
DEMO_PROMETHEUS_PORT=$DEMO_PROMETHEUS_PORT
DEMO_ALERTMANAGER_PORT=$DEMO_ALERTMANAGER_PORT
DEMO_WEBHOOK_PORT=$DEMO_WEBHOOK_PORT
EOF

# --- stopping ---------------------------------------------------------------------------------
FEED_PID=""
TICK_PID=""
STOPPING=0
stop_all() {
  [ "$STOPPING" = 1 ] && return
  STOPPING=1
  trap '' INT TERM HUP
  say "stopping everything the demo started ..."
  local name pid i left
  for pid in $FEED_PID $TICK_PID; do kill "$pid" 2>/dev/null || true; done
  for name in "${SERVICES[@]}"; do
    case $name in
      # Celery's main process shuts its pool down itself and says worker-offline.
      worker-*) pid=$(pid_of "$name") && kill -TERM "$pid" 2>/dev/null || true ;;
      # The node runs under su (Debian's wrapper): signalling our child would stop only su.
      rabbitmq)
        (
          rabbitmqctl_demo shutdown >/dev/null 2>&1 || signal_group rabbitmq TERM
          env ERL_EPMD_PORT="$DEMO_EPMD_PORT" epmd -kill >/dev/null 2>&1 || true # the node's own epmd
        ) &
        ;;
      *) signal_group "$name" TERM ;;
    esac
  done
  for ((i = 0; i < STOP_GRACE * 5; i++)); do
    left=""
    for name in "${SERVICES[@]}"; do group_alive "$name" && left="$left $name"; done
    [ -z "$left" ] && break
    # A warm shutdown waits for running tasks (a long chat message takes up to 45s): after 2s,
    # Celery's cold shutdown; a threads pool still waits for its threads, so after 5s, SIGKILL.
    for name in $left; do
      case $name in
        worker-*)
          if [ "$i" = 10 ]; then
            pid=$(pid_of "$name") && kill -QUIT "$pid" 2>/dev/null || true
          elif [ "$i" = 25 ]; then
            say "$name still runs tasks after 5s: killed"
            signal_group "$name" KILL
          fi
          ;;
      esac
    done
    sleep 0.2
  done
  for name in "${SERVICES[@]}"; do
    if group_alive "$name"; then
      say "$name did not stop within ${STOP_GRACE}s: killed"
      signal_group "$name" KILL
    fi
  done
  rm -f "$RUN_DIR"/*.pid
  say "stopped; logs stay in $LOG_DIR"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM HUP
trap 'stop_all' EXIT

# --- starting ---------------------------------------------------------------------------------
say "starting redis-server on 127.0.0.1:$DEMO_REDIS_PORT"
start_proc redis redis-server --bind 127.0.0.1 --port "$DEMO_REDIS_PORT" --dir "$DEMO_DIR/redis" \
  --save "" --appendonly no --daemonize no
for ((i = 0; ; i++)); do
  [ "$(redis-cli -p "$DEMO_REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
  alive redis && [ "$i" -lt 100 ] || { tail -n 20 "$LOG_DIR/redis.log" >&2; die "redis-server did not start"; }
  sleep 0.1
done

exporter_broker_flags=()
if [ "$DEMO_BROKER" = rabbitmq ]; then
  say "starting rabbitmq-server on 127.0.0.1:$DEMO_AMQP_PORT (management API on $DEMO_RABBITMQ_MGMT_PORT; boots in 5-30s)"
  d=$DEMO_DIR/rabbitmq
  mkdir -p "$d/mnesia" "$d/log" "$d/plugins-expand"
  echo '[rabbitmq_management].' >"$d/enabled_plugins"
  printf 'listeners.tcp.default = 127.0.0.1:%s\nmanagement.tcp.port = %s\nmanagement.tcp.ip = 127.0.0.1\n' \
    "$DEMO_AMQP_PORT" "$DEMO_RABBITMQ_MGMT_PORT" >"$d/rabbitmq.conf"
  # Debian's wrapper runs the node as the rabbitmq user when started as root: the directory is
  # handed to that user, who must also be able to reach it (a DEMO_DIR under /root or under a
  # mktemp -d directory is not reachable).
  if [ "$(id -u)" = 0 ]; then
    chown -R rabbitmq:rabbitmq "$d"
    su rabbitmq -s /bin/sh -c "test -w '$d'" ||
      die "the rabbitmq user cannot write $d: make DEMO_DIR's parent directories traversable (chmod o+x) or set DEMO_DIR elsewhere"
  fi
  mapfile -t renv < <(rabbitmq_env)
  start_proc rabbitmq env "${renv[@]}" rabbitmq-server
  for ((i = 0; ; i++)); do
    rabbitmqctl_demo await_startup --timeout 10 >/dev/null 2>&1 && break
    alive rabbitmq && [ "$i" -lt 30 ] || { tail -n 20 "$LOG_DIR/rabbitmq.log" >&2; die "rabbitmq-server did not start"; }
    sleep 1
  done
  exporter_broker_flags=(--broker.management-url="http://127.0.0.1:$DEMO_RABBITMQ_MGMT_PORT")
fi

say "starting celery_exporter on 127.0.0.1:$DEMO_EXPORTER_PORT"
# Remote control every 5s rather than 15s so a killed worker's queues show sooner. The scrape
# deadline stays below the demo Prometheus' scrape_timeout (4s).
start_proc exporter "$EXPORTER_BIN" \
  --scrape.timeout=3s \
  --broker.url="$BROKER_URL" "${exporter_broker_flags[@]}" \
  --web.listen-address="127.0.0.1:$DEMO_EXPORTER_PORT" \
  --config.file="$DEMO_DIR/celery_exporter.yml" \
  --celery.default-queue=default \
  --celery.queues="$DEMO_QUEUES" \
  --control.interval=5s
wait_http exporter "http://127.0.0.1:$DEMO_EXPORTER_PORT/-/ready" 30 || die "celery_exporter did not get ready"

say "starting the Celery workers (chat: threads x4, default: threads x4, background,notifications,dlq: prefork x4)"
for w in "${WORKERS[@]}"; do start_worker "$w"; done
for w in "${WORKERS[@]}"; do
  wait_worker_ready "$w" 120 || die "worker $w did not get ready (log: $LOG_DIR/worker-$w.log)"
done

say "starting the load generator"
start_celery_proc loadgen "$PY" "$DEMO_ROOT/test/demo/loadgen.py"

say "starting the alert webhook, Alertmanager and Prometheus"
start_proc webhook "$PY" "$DEMO_ROOT/test/demo/webhook.py" "$DEMO_WEBHOOK_PORT" "$LOG_DIR/alerts.jsonl"
start_proc alertmanager prometheus-alertmanager --config.file="$DEMO_DIR/alertmanager.yml" \
  --storage.path="$DEMO_DIR/alertmanager" --web.listen-address="127.0.0.1:$DEMO_ALERTMANAGER_PORT" \
  --cluster.listen-address= --log.level=warn
start_proc prometheus prometheus --config.file="$DEMO_DIR/prometheus.yml" \
  --storage.tsdb.path="$DEMO_DIR/prometheus" --storage.tsdb.retention.time=1d \
  --web.listen-address="127.0.0.1:$DEMO_PROMETHEUS_PORT" --web.enable-lifecycle \
  --rules.alert.resend-delay=5s --log.level=warn
wait_http webhook "http://127.0.0.1:$DEMO_WEBHOOK_PORT/" 30 || die "the webhook did not start"
wait_http alertmanager "http://127.0.0.1:$DEMO_ALERTMANAGER_PORT/-/ready" 60 || die "Alertmanager did not start"
wait_http prometheus "http://127.0.0.1:$DEMO_PROMETHEUS_PORT/-/ready" 60 || die "Prometheus did not start"

# --- running ----------------------------------------------------------------------------------
cat <<EOF

  The Celery demo is running. State and logs: $DEMO_DIR  (logs/*.log, alerts in logs/alerts.jsonl)

  Exporter       http://127.0.0.1:$DEMO_EXPORTER_PORT/metrics
  Prometheus     http://127.0.0.1:$DEMO_PROMETHEUS_PORT/alerts    (rules: /rules, targets: /targets)
  Alertmanager   http://127.0.0.1:$DEMO_ALERTMANAGER_PORT/
  Broker         $BROKER_URL   (RabbitMQ: rabbitmqctl -n $RABBITMQ_NODE list_queues, with test/demo/lib.sh's rabbitmq_env)
  Redis          redis-cli -p $DEMO_REDIS_PORT   (DB 0 is the Django cache with the Zep breaker; DB 1 the broker on Redis)
  Celery         test/demo/fault.sh celery inspect active_queues

  At rest no alert fires. Fault buttons (in another terminal); each makes exactly the alerts after
  its arrow fire within about two minutes; those in brackets fire in Prometheus but Alertmanager
  holds them back (one incident, one page):
    make demo-kill-worker          SIGKILL the background worker      -> CeleryWorkersBelowExpected [CeleryQueueWithoutConsumers CeleryQueueBacklog CeleryQueueBacklogCritical]
    make demo-trip-breaker         open the Zep breaker for 120s      -> ZepMemoryDegraded
    make demo-flood QUEUE=chat     80 slow tasks on one queue         -> CeleryQueueBacklog
    make demo-log-error            a chat message logs zep_call_error -> ZepCallErrors
    test/demo/fault.sh help        all of them (heal, close-breaker, purge QUEUE, alerts, ...)
  A killed worker comes back by itself after ${DEMO_HEAL_AFTER}s (DEMO_HEAL_AFTER=0: never).

  Dashboards: Grafana is not in Debian. Run Grafana 10.4+ with deploy/grafana/provisioning and
  dashboards/ (docs/deploy.md, "The demo"), e.g.
    docker run --rm --network host -v "\$PWD/deploy/grafana/provisioning:/etc/grafana/provisioning:ro" \\
      -v "\$PWD/dashboards:/var/lib/grafana/dashboards/celery:ro" grafana/grafana-oss:10.4.8
  (its data source is http://localhost:9090: with another DEMO_PROMETHEUS_PORT, edit the URL),
  or import dashboards/*.json into a Grafana with a data source for http://127.0.0.1:$DEMO_PROMETHEUS_PORT.

  Ctrl-C stops everything the demo started.

EOF
if [ "$HEADLESS" != 1 ]; then
  say "alerts, as Alertmanager sends them:"
  tail -n +1 -F "$LOG_DIR/webhook.log" 2>/dev/null &
  FEED_PID=$!
fi

started=$SECONDS
declare -A reported=()
while :; do
  sleep 2 &
  TICK_PID=$!
  wait "$TICK_PID" || true
  TICK_PID=""
  if [ "$DEMO_DURATION" -gt 0 ] && [ $((SECONDS - started)) -ge "$DEMO_DURATION" ]; then
    say "DEMO_DURATION=${DEMO_DURATION}s reached"
    break
  fi
  for w in "${WORKERS[@]}"; do
    if alive "worker-$w"; then
      reported[worker-$w]=""
      continue
    fi
    # fault.sh kill-worker writes the time of the kill; a crash is noticed here.
    down="$RUN_DIR/worker-$w.down"
    [ -f "$down" ] || date +%s >"$down"
    if [ -z "${reported[worker-$w]:-}" ]; then
      reported[worker-$w]=1
      say "worker $w is down (log: $LOG_DIR/worker-$w.log)"
    fi
    if [ "$DEMO_HEAL_AFTER" -gt 0 ] && [ $(($(date +%s) - $(cat "$down"))) -ge "$DEMO_HEAL_AFTER" ]; then
      say "restarting worker $w (down for ${DEMO_HEAL_AFTER}s)"
      signal_group "worker-$w" KILL # pool children left behind, if any
      start_worker "$w"
    fi
  done
  for name in redis webhook alertmanager prometheus exporter loadgen $([ "$DEMO_BROKER" = rabbitmq ] && echo rabbitmq); do
    if ! alive "$name" && [ -z "${reported[$name]:-}" ]; then
      reported[$name]=1
      say "$name exited unexpectedly; last lines of $LOG_DIR/$name.log:"
      tail -n 10 "$LOG_DIR/$name.log" || true
    fi
  done
done
exit 0
