"""Trips and closes the demo's Zep circuit breaker the way the seed app does.

The seed's force_write_only(reason, ttl_seconds) stores {mode, reason, until, forced_at} through
Django's cache (django-redis), which pickles the dict and writes it with SET ... PX under
":1:mem:mode:forced:v1"; get_forced_mode() treats an absent key or a past `until` as closed. This
module goes through the same library (Debian's python3-django-redis), so the exporter reads exactly
the bytes production writes. Without Django it falls back to the same pickle written directly.

Usage: python3 breaker.py trip [--ttl 120] [--reason consecutive_failures]
       python3 breaker.py close
The cache URL is $DEMO_CACHE_URL (default redis://127.0.0.1:6379/0).
"""

import argparse
import os
import pickle
import sys
import time

KEY = "mem:mode:forced:v1"  # Django adds KEY_PREFIX ("") and VERSION (1): ":1:mem:mode:forced:v1"
FAILURES_KEY = "mem:read:consec_failures"


def _cache(url):
    try:
        import django
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured:
        settings.configure(CACHES={"default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": url,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
        }})
        django.setup()
    from django.core.cache import cache
    return cache


def trip(url, reason="consecutive_failures", ttl=120.0, mode="write_only"):
    now = time.time()
    value = {"mode": mode, "reason": reason, "until": now + ttl, "forced_at": now}
    cache = _cache(url)
    if cache is not None:
        cache.set(KEY, value, timeout=ttl)
        if reason == "consecutive_failures":
            # What tripped it: three failed Zep reads within 60 s (a plain int: ASCII digits).
            cache.set(FAILURES_KEY, 3, timeout=60)
        return "django-redis"
    import redis  # python3-redis, a dependency of celery's redis transport

    r = redis.Redis.from_url(url)
    r.set(":1:" + KEY, pickle.dumps(value, protocol=4), px=int(ttl * 1000))
    if reason == "consecutive_failures":
        r.set(":1:" + FAILURES_KEY, b"3", px=60000)
    return "pickle"


def close(url):
    cache = _cache(url)
    if cache is not None:
        cache.delete(KEY)
        cache.delete(FAILURES_KEY)
        return
    import redis

    redis.Redis.from_url(url).delete(":1:" + KEY, ":1:" + FAILURES_KEY)


def main(argv):
    ap = argparse.ArgumentParser(prog="breaker.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trip")
    t.add_argument("--ttl", type=float, default=120.0)
    t.add_argument("--reason", default="consecutive_failures",
                   choices=["auth", "consecutive_failures", "manual", "rollback"])
    sub.add_parser("close")
    args = ap.parse_args(argv[1:])
    url = os.environ.get("DEMO_CACHE_URL", "redis://127.0.0.1:6379/0")
    if args.cmd == "trip":
        how = trip(url, args.reason, args.ttl)
        print("breaker zep: open (%s) for %gs, written with %s" % (args.reason, args.ttl, how))
    else:
        close(url)
        print("breaker zep: closed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
