"""A tiny Alertmanager webhook receiver for the demo: one line per alert on stdout, and every
notification appended as JSON to the file given as the second argument.

Usage: python3 webhook.py PORT ALERTS_JSONL
"""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        try:
            length = min(int(self.headers.get("Content-Length") or 0), 10 << 20)
            body = json.loads(self.rfile.read(length) or b"{}")
        except (ValueError, OSError) as e:
            self.send_error(400, str(e))
            return
        with open(self.server.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(body, sort_keys=True) + "\n")
        for a in body.get("alerts") or []:
            labels = a.get("labels") or {}
            extra = " ".join("%s=%s" % (k, v) for k, v in sorted(labels.items())
                             if k not in ("alertname", "severity", "job", "instance"))
            summary = (a.get("annotations") or {}).get("summary", "")
            print("%s alertmanager -> %s: %-8s %s [%s] %s %s" % (
                time.strftime("%H:%M:%S"), body.get("receiver", "?"), (a.get("status") or "").upper(),
                labels.get("alertname"), labels.get("severity", ""), extra, ("- " + summary) if summary else ""),
                flush=True)
        self.send_response(200)
        self.end_headers()

    def do_GET(self):
        # Health check for run.sh.
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, fmt, *args):
        pass


def main(argv):
    server = HTTPServer(("127.0.0.1", int(argv[1])), Handler)
    server.jsonl = argv[2]
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
