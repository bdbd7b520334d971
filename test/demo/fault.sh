#!/usr/bin/env bash
# Fault buttons for a running `make demo` (test/demo/run.sh). Each makes the matching alert fire
# within about a minute (the demo renders the rules with short `for` durations).
#
#   fault.sh kill-worker [chat|default|background]  SIGKILL a worker, as an OOM kill would (default
#                                                   background) -> CeleryWorkersBelowExpected; its
#                                                   queues' CeleryQueueWithoutConsumers (and backlogs)
#                                                   fire but Alertmanager holds them back
#   fault.sh heal                                   restart the workers that are down now
#   fault.sh trip-breaker [TTL] [REASON]            open the Zep breaker, as force_write_only() does
#                                                   (default 120s, consecutive_failures) -> ZepMemoryDegraded
#   fault.sh close-breaker                          close it again
#   fault.sh flood QUEUE [COUNT]                    COUNT tasks of DEMO_FLOOD_SECONDS (8) each on QUEUE
#                                                   (default 80) -> CeleryQueueBacklog; a queue nobody
#                                                   consumes also -> CeleryQueueWithoutConsumers
#   fault.sh purge QUEUE                            drop QUEUE's waiting messages
#   fault.sh log-error [COUNT]                      chat messages whose Zep write fails and logs
#                                                   zep_call_error (default 1) -> ZepCallErrors
#                                                   (the demo app's named log event)
#   fault.sh alerts                                 the alerts Prometheus has pending or firing
#   fault.sh celery ARGS...                         the celery CLI on the demo's app (inspect, ...)
#
# It finds the demo through DEMO_DIR (default .demo), where run.sh keeps ports and pids.
set -euo pipefail

# shellcheck source=test/demo/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

cmd=${1:-help}
[ $# -gt 0 ] && shift
case $cmd in help | -h | --help)
  usage
  exit 0
  ;;
esac

[ -f "$DEMO_DIR/env" ] && alive redis ||
  die "no demo is running in $DEMO_DIR: start one with \`make demo\` (or set DEMO_DIR)"
# shellcheck source=/dev/null
. "$DEMO_DIR/env"
# The ports of the running demo win over the defaults lib.sh chose.
BROKER_URL=$(broker_url)
CACHE_URL=redis://127.0.0.1:$DEMO_REDIS_PORT/0
PROM=http://127.0.0.1:$DEMO_PROMETHEUS_PORT

# produce sends a JSON plan with the test app's producer (test/celeryapp/produce.py).
produce() { celery_run "$PY" -m celeryapp.produce - >/dev/null; }

case $cmd in
  kill-worker)
    w=${1:-background}
    case $w in chat | default | background) ;; *) die "kill-worker: chat, default or background, not $w" ;; esac
    alive "worker-$w" || die "worker $w is not running (fault.sh heal restarts it)"
    signal_group "worker-$w" KILL
    date +%s >"$RUN_DIR/worker-$w.down"
    say "killed worker $w (pid $(pid_of "worker-$w") and its pool) with SIGKILL: no worker-offline is sent"
    say "expect celery_worker_up 0 within ~9s, then one page: CeleryWorkersBelowExpected (critical), naming"
    say "its queues; their CeleryQueueWithoutConsumers fires in Prometheus, held back by Alertmanager."
    say "run.sh restarts it after DEMO_HEAL_AFTER, or: fault.sh heal"
    ;;
  heal)
    n=0
    for w in "${WORKERS[@]}"; do
      alive "worker-$w" && continue
      signal_group "worker-$w" KILL
      start_worker "$w"
      n=$((n + 1))
      say "restarting worker $w"
    done
    [ "$n" -gt 0 ] || say "all workers are up"
    for w in "${WORKERS[@]}"; do
      wait_worker_ready "$w" 120 || die "worker $w did not get ready (log: $LOG_DIR/worker-$w.log)"
    done
    ;;
  trip-breaker)
    ttl=${1:-120}
    reason=${2:-consecutive_failures}
    celery_run "$PY" "$DEMO_ROOT/test/demo/breaker.py" trip --ttl "$ttl" --reason "$reason"
    celery_run "$PY" -c 'import sys; from celeryapp.app import log_json; log_json("WARNING", "assistant.memory.service", "zep_degraded_skipping_writes", reason=sys.argv[1])' "$reason"
    say "expect ZepMemoryDegraded (warning) within ~30s, resolved when the key expires in ${ttl}s"
    ;;
  close-breaker)
    celery_run "$PY" "$DEMO_ROOT/test/demo/breaker.py" close
    ;;
  flood)
    q=${1:-}
    [ -n "$q" ] || die "flood: which queue? (chat, default, background, notifications, dlq, or any name)"
    count=${2:-80}
    secs=${DEMO_FLOOD_SECONDS:-8}
    [[ $count =~ ^[0-9]+$ && $secs =~ ^[0-9.]+$ ]] || die "flood: COUNT and DEMO_FLOOD_SECONDS must be numbers"
    # The queue's own seed task where it takes a duration; the test app's sleep elsewhere. Slow
    # tasks, because the workers would drain quick ones faster than a backlog can build.
    case $q in
      chat) entry="{\"task\": \"assistant.tasks.process_chat_message\", \"kwargs\": {\"message\": \"flood\", \"seconds\": $secs}}" ;;
      default) entry="{\"task\": \"assistant.tasks.extract_preferences_async\", \"kwargs\": {\"seconds\": $secs}}" ;;
      background) entry="{\"task\": \"assistant.tasks.process_incoming_media_task\", \"kwargs\": {\"seconds\": $secs}}" ;;
      notifications) entry="{\"task\": \"assistant.tasks.send_whatsapp_message_task\", \"kwargs\": {\"seconds\": $secs}}" ;;
      *) entry="{\"task\": \"sleep\", \"args\": [$secs], \"queue\": $(printf '%s' "$q" | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}" ;;
    esac
    plan=""
    for ((i = 0; i < count; i++)); do plan="$plan${plan:+,}$entry"; done
    printf '[%s]' "$plan" | produce
    say "sent $count tasks of ${secs}s to $q: expect CeleryQueueBacklog once its depth stays at 5 or more for 75s"
    ;;
  purge)
    q=${1:-}
    [ -n "$q" ] || die "purge: which queue?"
    celery_run "$PY" -m celery -A celeryapp.app purge -f -Q "$q"
    ;;
  log-error)
    count=${1:-1}
    [[ $count =~ ^[0-9]+$ ]] || die "log-error: COUNT must be a number"
    entry='{"task": "assistant.tasks.process_chat_message", "kwargs": {"message": "zep is down", "seconds": 0.1, "zep_error": true}}'
    plan=""
    for ((i = 0; i < count; i++)); do plan="$plan${plan:+,}$entry"; done
    printf '[%s]' "$plan" | produce
    say "sent $count chat message(s) that log zep_call_error: expect ZepCallErrors (warning) within ~20s"
    ;;
  alerts)
    http_get "$PROM/api/v1/alerts" | "$PY" -c '
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"]
if not alerts:
    print("no alert pending or firing")
for a in sorted(alerts, key=lambda a: (a["state"], a["labels"]["alertname"])):
    l = a["labels"]
    extra = " ".join("%s=%s" % kv for kv in sorted(l.items()) if kv[0] not in ("alertname", "severity", "job", "instance"))
    print("%-8s %-32s %-9s %s" % (a["state"], l["alertname"], l.get("severity", ""), extra))
'
    ;;
  celery)
    celery_run "$PY" -m celery -A celeryapp.app "$@"
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
