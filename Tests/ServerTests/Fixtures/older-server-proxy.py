"""In front of a balsam-server, every second request answered as a server from before the push handshake would:
a push with a member such a server does not read is refused with 400 naming it (its `FieldReader.finish`), and
a reply it lets through has no `push_fields`. So one address is two servers of two versions, as in the middle of
a rolling upgrade behind a load balancer. GET / says how many pushes it refused. For PusherTests.

    python3 older-server-proxy.py UPSTREAM PORT_FILE MEMBER,MEMBER,...
"""

import http.server
import json
import os
import sys
import threading
import urllib.error
import urllib.request

upstream, port_file, members = sys.argv[1], sys.argv[2], set(sys.argv[3].split(","))
lock = threading.Lock()
state = {"requests": 0, "refused": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self.answer(200, dict(state))

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            state["requests"] += 1
            older = state["requests"] % 2 == 0
        if older:
            unknown = sorted(set(json.loads(body)) - members)
            if unknown:
                with lock:
                    state["refused"] += 1
                return self.answer(400, {"detail": "is not a field of this resource", "field": unknown[0]})
        headers = {"Content-Type": "application/json", "Authorization": self.headers.get("Authorization", "")}
        request = urllib.request.Request(upstream + self.path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                status, reply = r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            status, reply = e.code, json.loads(e.read())
        if older:
            reply.pop("push_fields", None)
        self.answer(status, reply)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
