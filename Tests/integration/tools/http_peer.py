#!/usr/bin/env python3
"""HTTP/1.1 peers for the policy tests, talking only to addresses the test gave.

  serve PORT RECORD     answer every request 200 with a JSON body naming its
                        method and path; append one JSON line per request that
                        arrived (method, path, headers, body length) to RECORD,
                        so a test can show a refused request never got there
  send HOST PORT JSON   send the raw requests in JSON (a list of strings) one
                        after another on one connection, each after the previous
                        answer; print a JSON list with each answer's status,
                        headers and body ("closed" once the connection ends)
  pipeline HOST PORT JSON   the same, but every request is written at once
"""
import json
import socket
import sys
import threading
import time

from peer import listener


def read_head(reader):
    line = reader.readline()
    if not line:
        return None, None
    headers = []
    while True:
        header = reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    return line.decode("latin-1").rstrip("\r\n"), headers


def read_body(reader, headers, no_body=False):
    values = dict(headers)
    if no_body:
        return b""
    if values.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int(reader.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while reader.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return body
            body += reader.read(size)
            reader.readline()
    length = int(values.get("content-length", "0"))
    return reader.read(length) if length else b""


def serve(port, record):
    lock = threading.Lock()
    server = listener(port)
    print("listening", flush=True)

    def handle(connection):
        reader = connection.makefile("rb")
        try:
            while True:
                line, headers = read_head(reader)
                if line is None:
                    return
                method, path, version = (line.split(" ") + ["", ""])[:3]
                body = read_body(reader, headers)
                with lock, open(record, "a") as out:
                    out.write(json.dumps({"method": method, "path": path, "headers": headers, "body": len(body)}) + "\n")
                answer = json.dumps({"method": method, "path": path}).encode()
                closing = dict(headers).get("connection", "").lower() == "close" or version == "HTTP/1.0"
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                    % (len(answer), b"Connection: close\r\n" if closing else b"")
                    + (b"" if method == "HEAD" else answer))
                if closing:
                    return
        except (OSError, ValueError):
            return
        finally:
            connection.close()

    while True:
        connection, _ = server.accept()
        threading.Thread(target=handle, args=(connection,), daemon=True).start()


def exchange(host, port, requests, pipeline):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    connection = socket.socket(family, socket.SOCK_STREAM)
    connection.settimeout(10)
    connection.connect((host, port))
    reader = connection.makefile("rb")
    answers = []
    if pipeline:
        connection.sendall("".join(requests).encode("latin-1"))
    for request in requests:
        sent = time.monotonic()
        try:
            if not pipeline:
                connection.sendall(request.encode("latin-1"))
            line, headers = read_head(reader)
            if line is None:
                answers.append({"status": "closed", "seconds": time.monotonic() - sent})
                continue
            body = read_body(reader, headers, no_body=request.startswith("HEAD "))
            answers.append({"status": int(line.split(" ")[1]), "headers": dict(headers), "body": body.decode("utf-8", "replace"),
                            "seconds": time.monotonic() - sent})
        except (OSError, ValueError) as error:
            answers.append({"status": "closed", "error": str(error), "seconds": time.monotonic() - sent})
    connection.close()
    print(json.dumps(answers))


def main():
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif mode in ("send", "pipeline"):
        exchange(sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), pipeline=mode == "pipeline")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
