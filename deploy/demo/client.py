#!/usr/bin/env python3
"""HTTP clients (and a server) for the demos in deploy/demo. Plain sockets,
urllib and http.server only, so the demos need nothing but python3.

  get URL          fetch URL, print the body; exit 1 if the request fails
  send METHOD URL  one request; print "STATUS BODY" whatever the status; exit 1
                   only when no answer came
  hold HOST PORT   open one connection and send half a request (the headers
                   are not finished), print "open", and keep the connection
                   open; on SIGUSR1 finish the request and print the status
                   line; give up after 60 s
  probe HOST PORT  plain TCP to HOST:PORT, send a request, report what
                   happened: "answered: STATUS LINE" (exit 0), "refused: ..."
                   when the connection was refused with a TCP reset (exit 3),
                   anything else (exit 4)
  serve PORT NAME  an HTTP server on PORT that answers every method and path
                   with 200 "NAME: METHOD PATH"
"""
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import urllib.error
import urllib.request


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            print(response.read().decode(errors="replace").strip())
    except Exception as error:
        print(f"request to {url} failed: {error}", file=sys.stderr)
        sys.exit(1)


def send(method, url):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except Exception as error:
        print(f"{method} {url} failed: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"{status} {body.decode(errors='replace').strip()}")


def request(host, path="/"):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mesh-agent-demo\r\n"


def hold(host, port):
    finish = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: finish.set())
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(request(host).encode())
        print("open", flush=True)
        if not finish.wait(60):
            print("nobody asked to finish the request within 60 s", file=sys.stderr)
            sys.exit(1)
        conn.sendall(b"Connection: close\r\n\r\n")
        status = conn.makefile("rb").readline().decode(errors="replace").strip()
        print(f"the held connection was answered: {status}", flush=True)
        if not status:
            sys.exit(1)


def probe(host, port):
    try:
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall((request(host) + "Connection: close\r\n\r\n").encode())
            status = conn.makefile("rb").readline().decode(errors="replace").strip()
    except ConnectionRefusedError as error:
        print(f"refused: {error.strerror} (the kernel answered the SYN with a TCP reset)")
        sys.exit(3)
    except OSError as error:
        print(f"failed otherwise: {error}")
        sys.exit(4)
    if not status:
        print("failed otherwise: the connection closed without an answer")
        sys.exit(4)
    print(f"answered: {status}")


def serve(port, name):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = f"{name}: {self.command} {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

        def log_message(self, *_):
            pass

    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def main(argv):
    if len(argv) == 2 and argv[0] == "get":
        get(argv[1])
    elif len(argv) == 3 and argv[0] == "send":
        send(argv[1], argv[2])
    elif len(argv) == 3 and argv[0] == "serve":
        serve(int(argv[1]), argv[2])
    elif len(argv) == 3 and argv[0] in ("hold", "probe"):
        (hold if argv[0] == "hold" else probe)(argv[1], int(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
