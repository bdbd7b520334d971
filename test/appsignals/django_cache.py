"""Writes and reads keys through Django's cache API with django-redis, as the seed app does.

    django_cache.py LOCATION PICKLE_VERSION COMMAND [ARGS...]

LOCATION is a redis:// URL (the Django cache's Redis DB); PICKLE_VERSION is django-redis's
PICKLE_VERSION option ("default" for pickle.DEFAULT_PROTOCOL). Commands:

    force KEY REASON TTL    what force_write_only(reason, ttl) in assistant/memory/flags.py stores;
                            prints {"key": redis key, "until": ..., "forced_at": ...} as JSON
    set_int KEY N TTL       cache.set(KEY, N, timeout=TTL): django-redis stores the digits
    set_evil KEY PATH       a value whose unpickling runs os.system("touch PATH")
    get KEY                 cache.get(KEY) (unpickles: runs an evil value's payload)

Keys are given without Django's prefix; the Redis key is ":1:KEY" (empty KEY_PREFIX, VERSION 1).
"""
import json
import os
import sys
import time

import django
from django.conf import settings


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, ("touch " + self.path,))


def main():
    location, version, command, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    options = {"CLIENT_CLASS": "django_redis.client.DefaultClient"}
    if version != "default":
        options["PICKLE_VERSION"] = int(version)
    settings.configure(CACHES={"default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "OPTIONS": options,
    }})
    django.setup()
    from django.core.cache import cache

    if command == "force":
        key, reason, ttl = args[0], args[1], int(args[2])
        until = time.time() + ttl
        state = {"mode": "write_only", "reason": reason, "until": until, "forced_at": time.time()}
        cache.set(key, state, timeout=ttl)
        print(json.dumps({"key": cache.make_key(key), "until": repr(state["until"]),
                          "forced_at": repr(state["forced_at"])}))
    elif command == "set_int":
        cache.set(args[0], int(args[1]), timeout=int(args[2]))
    elif command == "set_evil":
        cache.set(args[0], Evil(args[1]), timeout=None)
    elif command == "get":
        print(repr(cache.get(args[0])))
    else:
        sys.exit("unknown command " + command)


if __name__ == "__main__":
    main()
