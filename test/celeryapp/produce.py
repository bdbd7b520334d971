"""Sends a plan of tasks with apply_async and prints their ids as a JSON list (in plan order).

Usage: PYTHONPATH=test /usr/bin/python3 -m celeryapp.produce [plan.json]   (default: stdin)

The plan is a JSON list of objects:
  task         name: "add" (a task of celeryapp.app) or a full name ("assistant.tasks.x")
  args, kwargs positional / keyword arguments
  queue        queue (default: the app's routing, then task_default_queue)
  priority     0-9 (on Redis 0 is the highest)
  countdown    seconds until the ETA
  expires      seconds after sending when the task expires
  revoke_after revoke the task this many seconds after the plan started sending
  terminate    with revoke_after: terminate it while it runs (prefork), signal SIGTERM; the revoke
               waits (up to 60 s) until a worker reports the task active, so a busy machine cannot
               turn it into a plain revoke of a task not started yet
  link_error   name of a task to run (as a task) with the id of this one if it fails
An entry {"sleep": s} pauses the sending for s seconds (and has no id in the output).
"""

import json
import sys
import time

from celeryapp.app import app


def _task_name(name):
    if name in app.tasks:
        return name
    full = "celeryapp.app." + name
    if full in app.tasks:
        return full
    for registered in app.tasks:
        if registered.rsplit(".", 1)[-1] == name:
            return registered
    raise SystemExit("produce.py: unknown task %r" % (name,))


def _wait_active(task_id, timeout):
    """Returns once a worker lists task_id among its active tasks (or after timeout seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.inspect(timeout=0.5).active() or {}
        if any(t.get("id") == task_id for tasks in replies.values() for t in tasks or []):
            return
    sys.stderr.write("produce.py: task %s never became active; revoking anyway\n" % task_id)


def main(argv):
    src = open(argv[1], encoding="utf-8") if len(argv) > 1 and argv[1] != "-" else sys.stdin
    plan = json.load(src)
    if not isinstance(plan, list):
        raise SystemExit("produce.py: the plan must be a JSON list")

    start = time.monotonic()
    ids = []
    revokes = []  # (at, id, terminate)
    with app.producer_or_acquire() as producer:
        for entry in plan:
            if "sleep" in entry and "task" not in entry:
                time.sleep(float(entry["sleep"]))
                continue
            opts = {"producer": producer}
            for key in ("queue", "priority", "countdown", "expires"):
                if entry.get(key) is not None:
                    opts[key] = entry[key]
            if entry.get("link_error"):
                opts["link_error"] = app.tasks[_task_name(entry["link_error"])].s()
            task = app.tasks[_task_name(entry["task"])]
            res = task.apply_async(args=entry.get("args") or [], kwargs=entry.get("kwargs") or {}, **opts)
            ids.append(res.id)
            if entry.get("revoke_after") is not None:
                revokes.append((float(entry["revoke_after"]), res.id, bool(entry.get("terminate"))))

    for at, task_id, terminate in sorted(revokes):
        delay = start + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if terminate:
            _wait_active(task_id, 60)
        app.control.revoke(task_id, terminate=terminate, signal="SIGTERM")

    json.dump(ids, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
