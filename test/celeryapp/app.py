"""The Celery app the integration tests and the demo run: configured only from the environment.

Environment:
  CELERY_BROKER_URL             broker URL (default redis://127.0.0.1:6379/0)
  CELERY_TRANSPORT_OPTIONS      JSON dict -> broker_transport_options (global_keyprefix, sep, ...)
  CELERY_BROKER_USE_SSL         JSON dict -> broker_use_ssl (py-amqp's keys: ca_certs, certfile,
                                keyfile, cert_reqs as "required"/"optional"/"none")
  CELERY_DEFAULT_QUEUE          task_default_queue (default "celery", Celery's own default)
  CELERY_ACKS_LATE              1/true: task_acks_late (default off)
  CELERY_REJECT_ON_WORKER_LOST  1/true: task_reject_on_worker_lost (default off)
  CELERY_PREFETCH_MULTIPLIER    worker_prefetch_multiplier (default 4, Celery's default)
  CELERY_TASK_EVENTS            0/false: no task events from workers (default on)
  CELERY_UNBUFFERED_TASK_EVENTS 1/true: workers publish each task event at once instead of
                                buffering them (default off, Celery's behaviour; see below)
  CELERYAPP_LOG_FILE            where the seed-shaped tasks append their JSON log lines
                                (default: the worker's real stdout)

Task events are on everywhere (task_send_sent_event, worker_send_task_events, task_track_started),
as in the deployment the exporter is first built for, so task-sent carries every task's queue.
"""

import json
import os
import sys
import time

from celery import Celery


def _flag(name, default=False):
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


def _transport_options():
    raw = os.environ.get("CELERY_TRANSPORT_OPTIONS", "").strip()
    if not raw:
        return {}
    opts = json.loads(raw)
    if not isinstance(opts, dict):
        raise ValueError("CELERY_TRANSPORT_OPTIONS must be a JSON object, got %r" % (raw,))
    return opts


def _broker_use_ssl():
    raw = os.environ.get("CELERY_BROKER_USE_SSL", "").strip()
    if not raw:
        return False  # Celery's default: TLS only as the URL's scheme says
    import ssl

    opts = json.loads(raw)
    if "cert_reqs" in opts:
        opts["cert_reqs"] = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}[opts["cert_reqs"]]
    return opts


# The seed app's routes (see shared/notes/target-app.md), with its task names.
SEED_ROUTES = {
    "assistant.tasks.process_chat_message": {"queue": "chat"},
    "assistant.tasks.extract_preferences_async": {"queue": "default"},
    "assistant.tasks.log_preference_extraction_failure": {"queue": "default"},
    "assistant.tasks.send_whatsapp_message_task": {"queue": "notifications"},
    "assistant.tasks.process_incoming_media_task": {"queue": "background"},
    "assistant.tasks.dead_letter_queue": {"queue": "dlq"},
}

# Celery 5.2's worker buffers task events when it runs an event loop, the threads pool included;
# EventDispatcher.send appends to that buffer without its lock while flush() publishes and then
# clears it, so under a threads pool events appended in between are lost (celery/celery#10434:
# 40-60% of the task events of a busy threads worker). Publishing each event at once (under the
# dispatcher's lock) avoids the race. Opt-in: the integration tests observe Celery as it is.
if _flag("CELERY_UNBUFFERED_TASK_EVENTS"):
    from celery.events.dispatcher import EventDispatcher

    _dispatcher_init = EventDispatcher.__init__

    def _unbuffered_init(self, *args, **kwargs):
        kwargs["buffer_group"] = None
        kwargs["on_send_buffered"] = None
        _dispatcher_init(self, *args, **kwargs)

    EventDispatcher.__init__ = _unbuffered_init

app = Celery("celeryapp")
app.conf.update(
    broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options=_transport_options(),
    broker_use_ssl=_broker_use_ssl(),
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    # No result backend: the tests read everything from events and the broker.
    task_ignore_result=True,
    task_default_queue=os.environ.get("CELERY_DEFAULT_QUEUE", "celery"),
    task_routes=SEED_ROUTES,
    task_send_sent_event=True,
    worker_send_task_events=_flag("CELERY_TASK_EVENTS", True),
    task_track_started=True,
    task_acks_late=_flag("CELERY_ACKS_LATE"),
    task_reject_on_worker_lost=_flag("CELERY_REJECT_ON_WORKER_LOST"),
    worker_prefetch_multiplier=int(os.environ.get("CELERY_PREFETCH_MULTIPLIER", "4")),
    # Keep the worker's log plain: tests look for "<node> ready." in it.
    worker_redirect_stdouts=False,
)


# --- tasks for the integration tests -------------------------------------------------------------

@app.task
def add(x, y):
    return x + y


@app.task
def fail(msg="boom"):
    raise ValueError(msg)


@app.task(bind=True, max_retries=1)
def retry_once(self):
    # The exception given to retry() is what task-retried reports (its repr).
    if self.request.retries < 1:
        raise self.retry(exc=RuntimeError("transient"), countdown=0)
    return "ok after retry"


@app.task
def sleep(seconds=1.0):
    time.sleep(float(seconds))
    return seconds


# Soft limit: SoftTimeLimitExceeded is raised inside the task and deliberately not caught, so the
# task fails with it. Only the prefork pool enforces limits.
@app.task(soft_time_limit=1)
def soft_limited(seconds=3.0):
    time.sleep(float(seconds))
    return seconds


# Hard limit: the pool parent kills the child; task-failed then says "ExceptionWithTraceback()"
# (billiard >= 4.0.1) with TimeLimitExceeded on the traceback's last line. Prefork only.
@app.task(time_limit=1)
def hard_limited(seconds=3.0):
    deadline = time.time() + float(seconds)
    while time.time() < deadline:
        time.sleep(0.05)
    return seconds


@app.task
def revokable(seconds=10.0):
    time.sleep(float(seconds))
    return seconds


# --- seed-shaped tasks for the demo --------------------------------------------------------------

def log_json(level, logger, message, **fields):
    """Writes one JSON log line in the seed app's format."""
    rec = {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z",
           "level": level, "logger": logger, "message": message}
    rec.update(fields)
    line = json.dumps(rec, sort_keys=True) + "\n"
    path = os.environ.get("CELERYAPP_LOG_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
    else:
        sys.__stdout__.write(line)
        sys.__stdout__.flush()


@app.task(name="assistant.tasks.process_chat_message", bind=True,
          soft_time_limit=100, time_limit=120)
def process_chat_message(self, message="hello", seconds=0.2, zep_error=False):
    time.sleep(float(seconds))
    if zep_error:
        # As in the seed: the Zep write error is logged and swallowed, the task succeeds.
        log_json("ERROR", "assistant.memory.service", "zep_call_error",
                 task_id=self.request.id, error="ConnectTimeout('zep')")
    return {"reply": "echo: %s" % (message,)}


@app.task(name="assistant.tasks.log_preference_extraction_failure")
def log_preference_extraction_failure(task_id=None, **kwargs):
    # Used as extract_preferences_async's link_error. With one positional parameter Celery sends it
    # as a real task (to the default queue) with the failed task's id, as in the seed.
    log_json("ERROR", "assistant.tasks", "preferences_extract_failed", task_id=str(task_id))
    return "logged"


@app.task(name="assistant.tasks.extract_preferences_async", bind=True)
def extract_preferences_async(self, user_id=1, seconds=0.1, fail=False):
    time.sleep(float(seconds))
    if fail:
        raise RuntimeError("preference extraction failed for user %s" % (user_id,))
    log_json("INFO", "assistant.tasks", "preferences_extract_done",
             task_id=self.request.id, user_id=user_id)
    return {"user_id": user_id, "preferences": {}}


@app.task(name="assistant.tasks.send_whatsapp_message_task")
def send_whatsapp_message_task(to="+10000000000", body="hi", seconds=0.05):
    time.sleep(float(seconds))
    return {"to": to, "sent": True}


@app.task(name="assistant.tasks.process_incoming_media_task")
def process_incoming_media_task(media_id="m1", seconds=0.5):
    time.sleep(float(seconds))
    return {"media_id": media_id}


@app.task(name="assistant.tasks.dead_letter_queue")
def dead_letter_queue(original_task="", task_id="", error=""):
    log_json("WARNING", "assistant.tasks", "dead_letter", original_task=original_task,
             original_task_id=task_id, error=error)
    return "stored"
