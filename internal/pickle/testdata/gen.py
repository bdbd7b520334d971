"""Writes the golden pickles the Go decoder is tested against.

    python3 gen.py OUTDIR TOUCH_PATH [--big]

For every protocol from 0 to pickle.HIGHEST_PROTOCOL it writes value_pN.pickle and, beside it,
value_pN.canon: a canonical text form of the value that the Go test renders the same way from its
decoded value. evil_pN.pickle is a pickle whose __reduce__ calls os.system("touch TOUCH_PATH"):
Python's own pickle.loads would run it; the Go decoder must refuse it. forced_mode.pickle is what
django-redis writes for the seed app's breaker (pickle.DEFAULT_PROTOCOL). --big adds a 70 kB
string (larger than a protocol 4 frame); the committed testdata is made without it.
"""
import os
import pickle
import struct
import sys


def canon(v):
    # Hex forms avoid any difference between Python's and Go's escaping and float formatting.
    if v is None:
        return "N"
    if v is True:
        return "T"
    if v is False:
        return "F"
    if isinstance(v, int):
        return "i%d" % v
    if isinstance(v, float):
        return "f" + struct.pack(">d", v).hex()
    if isinstance(v, str):
        return "s" + v.encode("utf-8", "surrogatepass").hex()
    if isinstance(v, bytes):
        return "b" + v.hex()
    if isinstance(v, bytearray):
        return "B" + bytes(v).hex()
    if isinstance(v, tuple):
        return "(" + ",".join(canon(x) for x in v) + ")"
    if isinstance(v, list):
        return "[" + ",".join(canon(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(canon(k) + ":" + canon(x) for k, x in v.items()) + "}"
    if isinstance(v, frozenset):
        return "F{" + ",".join(sorted(canon(x) for x in v)) + "}"
    if isinstance(v, set):
        return "S{" + ",".join(sorted(canon(x) for x in v)) + "}"
    raise TypeError(type(v))


def value(protocol, big):
    shared = [1, "shared"]
    v = {
        "mode": "write_only",
        "reason": "consecutive_failures",
        "until": 1754300000.125,
        "forced_at": 1754299700.5,
        "ints": [0, 1, 255, 256, 65535, 65536, -1, 2**31 - 1, -(2**31), 2**31, 2**63 - 1,
                 2**63, -(2**63) - 1, 2**100, -(2**70), 10**40],
        "floats": [0.0, -1.5, 1e300, 5e-324, float("inf"), float("-inf")],
        "consts": (True, False, None),
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
        "same_twice": [shared, shared],
        "nested": {"a": {"b": [{"c": ()}]}},
        "text": "h\u00e9llo \u2603 \U0001F600 back\\slash\nnewline \"quoted\" 'single'",
        "long_text": "x" * 300,
        (1, "a"): "tuple key",
        7: "int key",
        None: "none key",
    }
    if protocol >= 3:
        v["bytes"] = b"\x00\x01\xff"
        v["long_bytes"] = bytes(range(256)) * 2
    if protocol >= 4:
        v["set"] = {42}
        v["frozenset"] = frozenset({"x"})
        v[frozenset({1})] = "frozenset key"
        if big:
            # Over pickle's 64 KiB frame target: written outside any frame.
            v["big_frame"] = ["y" * 70000]
    if protocol >= 5:
        v["bytearray"] = bytearray(b"ba")
    return v


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, ("touch " + self.path,))


def main():
    out, touch = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for p in range(pickle.HIGHEST_PROTOCOL + 1):
        v = value(p, "--big" in sys.argv[3:])
        with open(os.path.join(out, "value_p%d.pickle" % p), "wb") as f:
            f.write(pickle.dumps(v, protocol=p))
        with open(os.path.join(out, "value_p%d.canon" % p), "w") as f:
            f.write(canon(v) + "\n")
        with open(os.path.join(out, "evil_p%d.pickle" % p), "wb") as f:
            f.write(pickle.dumps(Evil(touch), protocol=p))
    forced = {"mode": "write_only", "reason": "auth", "until": 1754300000.25, "forced_at": 1754299700.25}
    with open(os.path.join(out, "forced_mode.pickle"), "wb") as f:
        f.write(pickle.dumps(forced, pickle.DEFAULT_PROTOCOL))
    with open(os.path.join(out, "forced_mode.canon"), "w") as f:
        f.write(canon(forced) + "\n")


if __name__ == "__main__":
    main()
