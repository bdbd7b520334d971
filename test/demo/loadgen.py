"""The demo's load: the seed app's task mix, sent through its routes, until SIGTERM.

Per second, on average (all tunable by environment):
  DEMO_RATE              tasks per second (default 3), split as
                         chat 40%, preference extraction 25%, media 15%, WhatsApp 15%, dead letters 5%
  DEMO_LONG_CHAT         share of chat messages that run long, 20-45 s (default 0.02)
  DEMO_PREF_FAIL         share of preference extractions that fail (default 0); each failure runs
                         log_preference_extraction_failure, the seed's link_error callback
  DEMO_ZEP_ERROR_EVERY   mean seconds between chat messages whose Zep write fails and logs
                         zep_call_error (default 0 = never)
  DEMO_BREAKER_EVERY     mean seconds between trips of the Zep breaker (default 0 = never),
                         each open for DEMO_BREAKER_TTL seconds (default 60)
By default the load is healthy and no alert fires: the seed's criteria allow no preference failure,
no zep_call_error and no open breaker, so each of these pages (PreferenceExtractionFailing,
ZepCallErrors, ZepMemoryDegraded); the fault buttons (fault.sh) cause them on purpose. Set the
variables above for background noise, and expect those alerts.
Everything is random but seeded with DEMO_SEED when set, so a run can be repeated.
"""

import math
import os
import random
import signal
import sys
import time
import uuid

from celeryapp.app import (app, dead_letter_queue, extract_preferences_async, log_json,
                           log_preference_extraction_failure, process_chat_message,
                           process_incoming_media_task, send_whatsapp_message_task)

import breaker

MESSAGES = ["villa with a pool in Kyrenia", "2 bedrooms near the sea", "long-term rental under 900",
            "pet friendly apartment", "anything in Bellapais?", "what about parking"]

stopping = False


def _stop(signum, frame):
    global stopping
    stopping = True


def poisson(rnd, mean):
    """Arrivals in one tick (Knuth): bursts happen, the mean is the rate."""
    limit, k, p = math.exp(-mean), 0, rnd.random()
    while p > limit:
        k += 1
        p *= rnd.random()
    return k


def env_float(name, default):
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        sys.exit("loadgen: %s must be a number, got %r" % (name, os.environ[name]))


class Load:
    def __init__(self, rnd, producer):
        self.rnd = rnd
        self.producer = producer
        self.long_chat = env_float("DEMO_LONG_CHAT", 0.02)
        self.pref_fail = env_float("DEMO_PREF_FAIL", 0)
        self.sent = 0

    def send(self, task, zep_error=False, **opts):
        opts["producer"] = self.producer
        r = self.rnd
        if task == "chat":
            seconds = r.uniform(20, 45) if r.random() < self.long_chat else r.uniform(0.2, 1.5)
            process_chat_message.apply_async(kwargs={
                "message": r.choice(MESSAGES), "seconds": round(seconds, 2), "zep_error": zep_error}, **opts)
        elif task == "prefs":
            extract_preferences_async.apply_async(
                kwargs={"user_id": r.randint(1, 500), "seconds": round(r.uniform(0.1, 0.8), 2),
                        "fail": r.random() < self.pref_fail},
                link_error=log_preference_extraction_failure.s(), **opts)
        elif task == "media":
            process_incoming_media_task.apply_async(
                kwargs={"media_id": uuid.uuid4().hex[:8], "seconds": round(r.uniform(0.3, 2.0), 2)}, **opts)
        elif task == "whatsapp":
            send_whatsapp_message_task.apply_async(
                kwargs={"to": "+90533%07d" % r.randint(0, 9999999), "seconds": round(r.uniform(0.05, 0.3), 2)}, **opts)
        elif task == "dead":
            # What the seed sends on MaxRetriesExceededError.
            dead_letter_queue.apply_async(kwargs={
                "original_task": "assistant.tasks.send_whatsapp_message_task",
                "task_id": str(uuid.uuid4()), "error": "MaxRetriesExceededError()"}, **opts)
        self.sent += 1


def main():
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    seed = os.environ.get("DEMO_SEED")
    rnd = random.Random(int(seed) if seed else None)
    rate = env_float("DEMO_RATE", 3)
    zep_every = env_float("DEMO_ZEP_ERROR_EVERY", 0)
    breaker_every = env_float("DEMO_BREAKER_EVERY", 0)
    breaker_ttl = env_float("DEMO_BREAKER_TTL", 60)
    cache_url = os.environ.get("DEMO_CACHE_URL", "redis://127.0.0.1:6379/0")
    mix = [("chat", 40), ("prefs", 25), ("media", 15), ("whatsapp", 15), ("dead", 5)]
    names = [m[0] for m in mix]
    weights = [m[1] for m in mix]
    tick = 0.5
    print("loadgen: %.1f tasks/s; zep_call_error every ~%gs, breaker trip every ~%gs" %
          (rate, zep_every, breaker_every), flush=True)
    last_report = time.monotonic()
    while not stopping:
        started = time.monotonic()
        try:
            with app.producer_or_acquire() as producer:
                load = Load(rnd, producer)
                while not stopping:
                    t0 = time.monotonic()
                    n = poisson(rnd, rate * tick)
                    for task in rnd.choices(names, weights, k=n):
                        load.send(task)
                    if zep_every > 0 and rnd.random() < tick / zep_every:
                        load.send("chat", zep_error=True)
                    if breaker_every > 0 and rnd.random() < tick / breaker_every:
                        breaker.trip(cache_url, "consecutive_failures", breaker_ttl)
                        log_json("WARNING", "assistant.memory.service", "zep_degraded_skipping_writes",
                                 reason="consecutive_failures", ttl=breaker_ttl)
                        print("loadgen: tripped the Zep breaker for %gs" % breaker_ttl, flush=True)
                    if time.monotonic() - last_report >= 60:
                        print("loadgen: %d tasks sent in the last minute" % load.sent, flush=True)
                        load.sent = 0
                        last_report = time.monotonic()
                    time.sleep(max(0.0, tick - (time.monotonic() - t0)))
        except Exception as e:  # the broker went away: keep the demo alive, try again
            print("loadgen: %s: %s; retrying in 2s" % (type(e).__name__, e), file=sys.stderr, flush=True)
            if time.monotonic() - started < 2:
                time.sleep(2)
    print("loadgen: stopped", flush=True)


if __name__ == "__main__":
    main()
