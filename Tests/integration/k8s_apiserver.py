"""A stand-in Kubernetes API server for the integration tests.

It speaks the wire format the agent's Kubernetes source reads, for pods and
namespaces only:

- lists: ``GET /api/v1/pods?fieldSelector=spec.nodeName%3DNODE&limit=N`` and
  ``GET /api/v1/namespaces``, with ``metadata.resourceVersion`` and
  ``limit``/``continue`` pages;
- watches: the same paths with ``watch=1&resourceVersion=RV``, answered with a
  chunked stream of one JSON object per line,
  ``{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}``: first
  what happened after RV, then each change as it is made; ``BOOKMARK`` lines
  when asked for (or every ``bookmark_interval`` seconds), an ``ERROR`` with
  code 410 once history before RV has been compacted, and the end of the
  stream after ``timeoutSeconds``;
- a bearer token, when one is required (401 with a ``Status`` otherwise).

A test scripts it from Python (``add_pod``, ``modify_pod``, ``delete_pod``,
``set_namespace``, ``bookmark``, ``expire``, ``drop_watches``, ``stop``,
``start``), or, when it runs in another network namespace, as a process
(``python3 k8s_apiserver.py --port P --control SOCKET``) driven over a Unix
socket with ``ControlClient``. It listens on 127.0.0.1 only.
"""
import argparse
import base64
import http.server
import json
import os
import queue
import socket
import socketserver
import threading
import time
import urllib.parse
import uuid

LOOPBACK = "127.0.0.1"


class StandInAPIServer:
    """Pods and namespaces, their history, and an HTTP server serving them.

    The state outlives ``stop()``: ``start()`` again on the same port is an API
    server that restarted with its etcd intact.
    """

    def __init__(self, port=0, token=None, bookmark_interval=None, host=LOOPBACK):
        if host != LOOPBACK:
            raise ValueError(f"the stand-in API server listens on {LOOPBACK} only, not {host}")
        self.host = host
        self.port = port
        self.token = token
        self.bookmark_interval = bookmark_interval
        # Answer a watch from a compacted version with HTTP 410 instead of an
        # ERROR event in a 200 stream (real servers have done both).
        self.gone_as_http_status = False
        self._lock = threading.RLock()
        self._revision = 1000
        self._pods = {}  # uid -> (pod dict, revision)
        self._namespaces = {}  # name -> (labels, revision, uid)
        self._history = []  # (resource, revision, node or None, line)
        self._oldest_watchable = 0
        self._watches = []  # _Watch
        self._connections = set()
        self.requests = []  # (path with query, Authorization header or None)
        self._server = None
        self._thread = None

    # -- running ---------------------------------------------------------

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self):
        stand_in = self

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def process_request(self, request, client_address):
                with stand_in._lock:
                    stand_in._connections.add(request)
                super().process_request(request, client_address)

            def shutdown_request(self, request):
                with stand_in._lock:
                    stand_in._connections.discard(request)
                super().shutdown_request(request)

        self._server = Server((self.host, self.port), _handler_for(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="k8s-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stops listening and drops every connection, as a crashed API server."""
        server = self._server
        if server is None:
            return
        self._server = None
        server.shutdown()
        server.server_close()
        self.drop_watches()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- scripting ---------------------------------------------------------

    def add_pod(self, name, namespace, node, uid=None, labels=None, service_account=None, qos_class="BestEffort",
                ports=(), ips=(), host_network=False, phase="Running", annotations=None):
        """Adds a pod; returns its uid."""
        pod = {
            "uid": uid or str(uuid.uuid4()), "name": name, "namespace": namespace, "node": node,
            "labels": dict(labels or {}), "annotations": dict(annotations or {}),
            "service_account": service_account, "qos_class": qos_class, "ports": list(ports),
            "ips": list(ips), "host_network": host_network, "phase": phase,
        }
        with self._lock:
            if pod["uid"] in self._pods:
                raise ValueError(f"pod {pod['uid']} exists; use modify_pod")
            self._change_pod("ADDED", pod)
        return pod["uid"]

    def modify_pod(self, uid, **changes):
        """Changes fields of a pod (the keyword arguments of ``add_pod``)."""
        with self._lock:
            pod = dict(self._pod_fields(uid))
            unknown = set(changes) - set(pod)
            if unknown:
                raise ValueError(f"unknown pod fields {sorted(unknown)}")
            pod.update(changes)
            self._change_pod("MODIFIED", pod)

    def delete_pod(self, uid):
        with self._lock:
            pod = self._pod_fields(uid)
            self._revision += 1
            del self._pods[uid]
            self._record("pods", pod["node"], "DELETED", _pod_object(pod, self._revision))

    def set_namespace(self, name, labels=None):
        """Adds a namespace, or replaces its labels."""
        with self._lock:
            event = "MODIFIED" if name in self._namespaces else "ADDED"
            uid = self._namespaces[name][2] if name in self._namespaces else str(uuid.uuid4())
            self._revision += 1
            self._namespaces[name] = (dict(labels or {}), self._revision, uid)
            self._record("namespaces", None, event, _namespace_object(name, labels or {}, self._revision, uid))

    def delete_namespace(self, name):
        with self._lock:
            labels, _, uid = self._namespaces.pop(name)
            self._revision += 1
            self._record("namespaces", None, "DELETED", _namespace_object(name, labels, self._revision, uid))

    def bookmark(self):
        """A BOOKMARK at the current version on every open watch."""
        with self._lock:
            line = _bookmark_line(self._revision)
            for watch in self._watches:
                watch.send(line)

    def expire(self, notify=True):
        """Compacts history: a watch from any version up to now gets 410. With
        ``notify`` the open watches are told so (an ERROR event) and ended."""
        with self._lock:
            # The compaction is a change of its own: a list after it gives a
            # version that can be watched.
            self._revision += 1
            self._oldest_watchable = self._revision
            self._history = []
            watches, self._watches = self._watches, []
        for watch in watches:
            if notify:
                watch.send(_gone_line(self._revision))
            watch.end()

    def drop_watches(self):
        """Breaks every open watch connection without ending its stream."""
        with self._lock:
            watches, self._watches = self._watches, []
        for watch in watches:
            watch.drop()

    @property
    def open_watches(self):
        with self._lock:
            return len(self._watches)

    @property
    def resource_version(self):
        with self._lock:
            return str(self._revision)

    def pods(self):
        with self._lock:
            return {uid: dict(pod) for uid, (pod, _) in self._pods.items()}

    # -- internals -----------------------------------------------------------

    def _pod_fields(self, uid):
        if uid not in self._pods:
            raise KeyError(f"no pod {uid}")
        return self._pods[uid][0]

    def _change_pod(self, event, pod):
        self._revision += 1
        self._pods[pod["uid"]] = (pod, self._revision)
        self._record("pods", pod["node"], event, _pod_object(pod, self._revision))

    def _record(self, resource, node, event, obj):
        line = _line({"type": event, "object": obj})
        self._history.append((resource, self._revision, node, line))
        for watch in self._watches:
            if watch.resource == resource and (watch.node is None or watch.node == node):
                watch.send(line)

    def _list(self, resource, node, query):
        with self._lock:
            if resource == "pods":
                items = [_pod_object(pod, rev) for uid, (pod, rev) in sorted(self._pods.items())
                         if node is None or pod["node"] == node]
                kind = "PodList"
            else:
                items = [_namespace_object(name, labels, rev, uid)
                         for name, (labels, rev, uid) in sorted(self._namespaces.items())]
                kind = "NamespaceList"
            metadata = {"resourceVersion": str(self._revision)}
        offset = 0
        if "continue" in query:
            try:
                offset = int(json.loads(base64.urlsafe_b64decode(query["continue"].encode()))["offset"])
            except (ValueError, KeyError, TypeError):
                return 410, _status(410, "Expired", "the provided continue parameter is too old")
        limit = int(query["limit"]) if query.get("limit", "").isdigit() and int(query["limit"]) > 0 else len(items) or 1
        page = items[offset:offset + limit]
        if offset + len(page) < len(items):
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps({"offset": offset + len(page)}).encode()).decode()
        return 200, _line({"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": page})

    def _open_watch(self, resource, node, query, handler):
        """The watch for a request, registered, with what it must replay first;
        or None and an HTTP answer."""
        try:
            start = int(query.get("resourceVersion", "0") or "0")
        except ValueError:
            return None, (400, _status(400, "BadRequest", "resourceVersion is not a number"))
        timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds", "").isdigit() else None
        bookmarks = query.get("allowWatchBookmarks") == "true"
        with self._lock:
            if start < self._oldest_watchable:
                if self.gone_as_http_status:
                    return None, (410, _status(410, "Expired", f"too old resource version: {start} ({self._oldest_watchable})"))
                watch = _Watch(resource, node, handler, timeout, None)
                watch.send(_gone_line(start))
                watch.end()
                return watch, None
            watch = _Watch(resource, node, handler, timeout, self.bookmark_interval if bookmarks else None)
            for res, rev, event_node, line in self._history:
                if res == resource and rev > start and (node is None or event_node == node):
                    watch.send(line)
            self._watches.append(watch)
            watch.bookmark = lambda: _bookmark_line(self.resource_version)
        return watch, None

    def _close_watch(self, watch):
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)


class _Watch:
    """One open watch: lines queued by the scripting side, written by the
    connection's own thread."""

    def __init__(self, resource, node, handler, timeout, bookmark_interval):
        self.resource = resource
        self.node = node
        self.handler = handler
        self.deadline = time.monotonic() + timeout if timeout else None
        self.bookmark_interval = bookmark_interval
        self.bookmark = None
        self.queue = queue.Queue()

    def send(self, line):
        self.queue.put(("line", line))

    def end(self):
        self.queue.put(("end", None))

    def drop(self):
        self.queue.put(("drop", None))
        _shutdown(self.handler.connection)

    def next(self):
        """The next thing to do: ("line", text), ("end", None), ("drop", None)."""
        while True:
            waits = [w for w in (self.bookmark_interval,
                                 self.deadline - time.monotonic() if self.deadline else None) if w is not None]
            try:
                return self.queue.get(timeout=max(0.0, min(waits)) if waits else None)
            except queue.Empty:
                if self.deadline and time.monotonic() >= self.deadline:
                    return ("end", None)
                if self.bookmark:
                    return ("line", self.bookmark())


def _handler_for(stand_in):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "k8s-apiserver-stand-in"

        def log_message(self, *args):
            pass

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            authorization = self.headers.get("Authorization")
            with stand_in._lock:
                stand_in.requests.append((self.path, authorization))
            if stand_in.token is not None and authorization != f"Bearer {stand_in.token}":
                return self._json(401, _status(401, "Unauthorized", "Unauthorized"))
            resources = {"/api/v1/pods": "pods", "/api/v1/namespaces": "namespaces"}
            if url.path not in resources:
                return self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))
            node = None
            selector = query.get("fieldSelector", "")
            if selector:
                if not selector.startswith("spec.nodeName=") or url.path != "/api/v1/pods":
                    return self._json(400, _status(400, "BadRequest", f"unsupported field selector {selector!r}"))
                node = selector[len("spec.nodeName="):]
            if query.get("watch") in ("1", "true"):
                return self._watch(resources[url.path], node, query)
            return self._json(*stand_in._list(resources[url.path], node, query))

        def _json(self, code, body):
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _watch(self, resource, node, query):
            watch, answer = stand_in._open_watch(resource, node, query, self)
            if watch is None:
                return self._json(*answer)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            try:
                while True:
                    kind, line = watch.next()
                    if kind == "drop":
                        self.close_connection = True
                        return
                    if kind == "end":
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                        return
                    # Each line in two chunks, so a client must join them.
                    data = (line + "\n").encode()
                    for piece in (data[:len(data) // 2], data[len(data) // 2:]):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        self.wfile.flush()
            except OSError:
                self.close_connection = True
            finally:
                stand_in._close_watch(watch)

    return Handler


# -- objects as the API server writes them --------------------------------------

def _line(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _status(code, reason, message):
    return _line({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": message, "reason": reason, "code": code})


def _gone_line(version):
    return _line({"type": "ERROR", "object": json.loads(
        _status(410, "Expired", f"too old resource version: {version}"))})


def _bookmark_line(version):
    return _line({"type": "BOOKMARK", "object": {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"resourceVersion": str(version), "creationTimestamp": None,
                     "annotations": {"k8s.io/initial-events-end": "true"}},
        "spec": {"containers": None}, "status": {}}})


def _pod_object(pod, revision):
    spec = {
        "nodeName": pod["node"], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
        "containers": [{"name": "main", "image": "localhost/busybox:test",
                        "ports": [{"containerPort": p, "protocol": "TCP"} for p in pod["ports"]]}],
    }
    if pod["service_account"]:
        spec["serviceAccountName"] = spec["serviceAccount"] = pod["service_account"]
    if pod["host_network"]:
        spec["hostNetwork"] = True
    status = {"phase": pod["phase"], "qosClass": pod["qos_class"]}
    if pod["ips"]:
        status["podIP"] = pod["ips"][0]
        status["podIPs"] = [{"ip": ip} for ip in pod["ips"]]
    metadata = {"name": pod["name"], "namespace": pod["namespace"], "uid": pod["uid"],
                "resourceVersion": str(revision), "creationTimestamp": "2026-12-07T10:00:00Z",
                "labels": pod["labels"]}
    if pod["annotations"]:
        metadata["annotations"] = pod["annotations"]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": spec, "status": status}


def _namespace_object(name, labels, revision, uid):
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "uid": uid, "resourceVersion": str(revision),
                         "labels": {**labels, "kubernetes.io/metadata.name": name}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}


def _shutdown(connection):
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


# -- driving it from another process ---------------------------------------------

CONTROL_OPERATIONS = {"add_pod", "modify_pod", "delete_pod", "set_namespace", "delete_namespace", "bookmark",
                      "expire", "drop_watches", "stop", "start", "open_watches", "resource_version", "requests", "pods"}


def serve_control(stand_in, path):
    """Serves ``ControlClient`` requests on the Unix socket ``path``: one JSON
    object a line, ``{"op": NAME, "args": {...}}``, answered with
    ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT}``."""

    class Control(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            for raw in self.rfile:
                try:
                    request = json.loads(raw)
                    op = request["op"]
                    if op not in CONTROL_OPERATIONS:
                        raise ValueError(f"unknown operation {op!r}")
                    attribute = getattr(stand_in, op)
                    result = attribute(**request.get("args", {})) if callable(attribute) else attribute
                    if op == "start":
                        result = stand_in.port
                    answer = {"ok": True, "result": result}
                except Exception as error:  # the caller gets every failure as text
                    answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
                self.wfile.write((json.dumps(answer) + "\n").encode())
                self.wfile.flush()

    if os.path.exists(path):
        os.unlink(path)
    server = Control(path, Handler)
    os.chmod(path, 0o600)
    threading.Thread(target=server.serve_forever, name="k8s-apiserver-control", daemon=True).start()
    return server


class ControlClient:
    """Calls a stand-in in another process: ``client.add_pod(name=..., ...)``."""

    def __init__(self, path, timeout=10):
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout)
        self._socket.connect(path)
        self._file = self._socket.makefile("rwb")

    def call(self, op, **args):
        self._file.write((json.dumps({"op": op, "args": args}) + "\n").encode())
        self._file.flush()
        line = self._file.readline()
        if not line:
            raise ConnectionError("the stand-in API server closed its control socket")
        answer = json.loads(line)
        if not answer["ok"]:
            raise RuntimeError(answer["error"])
        return answer["result"]

    def __getattr__(self, op):
        if op not in CONTROL_OPERATIONS:
            raise AttributeError(op)
        return lambda **args: self.call(op, **args)

    def close(self):
        self._file.close()
        self._socket.close()


def main():
    parser = argparse.ArgumentParser(description="A stand-in Kubernetes API server (pods and namespaces) on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", help="require this bearer token")
    parser.add_argument("--bookmark-interval", type=float, help="seconds between bookmarks on watches that allow them")
    parser.add_argument("--control", required=True, help="Unix socket to take commands on")
    args = parser.parse_args()
    stand_in = StandInAPIServer(port=args.port, token=args.token, bookmark_interval=args.bookmark_interval).start()
    serve_control(stand_in, args.control)
    # The one line a parent waits for before it connects.
    print(json.dumps({"url": stand_in.url, "port": stand_in.port, "control": args.control}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
