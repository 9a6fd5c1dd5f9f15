#!/usr/bin/env python3
"""A gRPC-style server and client for the integration tests: HTTP/2 over plain
TCP with prior knowledge (what gRPC calls h2c), unary calls only, using the
`h2` library and nothing else.

  serve PORT [RECORD]   answer every call, on any path, with :status 200,
                        content-type application/grpc, one length-prefixed
                        message echoing the request's message, and trailers
                        grpc-status 0; the path that arrived is echoed in the
                        x-echo-path header. With RECORD, append one JSON line per
                        call that arrived (path, authority, headers, message
                        length), so a test can show a refused call never got
                        there. Prints "listening" once bound.
  call HOST PORT PATH MESSAGE [AUTHORITY]
                        make one unary call; print one JSON object: status (the
                        HTTP status, or null), grpc_status and grpc_message
                        (from trailers, or from headers of a trailers-only
                        answer; null when absent), body (the response message,
                        or the raw body when it is not gRPC, such as the agent's
                        "RBAC: access denied"), headers, and reset (the
                        RST_STREAM error code, or null).

As a library: `call(host, port, path, message)` returns (status, grpc_status, body).
"""
import json
import socket
import struct
import sys
import threading

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (ConnectionTerminated, DataReceived, RequestReceived, ResponseReceived, StreamEnded, StreamReset,
                       TrailersReceived, WindowUpdated)
from h2.exceptions import ProtocolError

from peer import listener


def frame(message):
    """One gRPC message: uncompressed flag, 4-byte big-endian length, payload."""
    return struct.pack(">BI", 0, len(message)) + message


def unframe(body):
    """The payload of the first gRPC message in `body`, or None if it is not one."""
    if len(body) < 5:
        return None
    compressed, length = struct.unpack(">BI", body[:5])
    if compressed != 0 or len(body) < 5 + length:
        return None
    return body[5:5 + length]


class Sender:
    """Sends DATA within the peer's flow-control windows, the rest when they open."""

    def __init__(self, conn, sock):
        self.conn = conn
        self.sock = sock
        self.pending = {}  # stream id -> [bytes left, end_stream, trailers]

    def send(self, stream_id, data, end_stream=False, trailers=None):
        self.pending[stream_id] = [data, end_stream, trailers]
        self.flush()

    def flush(self):
        for stream_id in list(self.pending):
            data, end_stream, trailers = self.pending[stream_id]
            while data:
                window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                if window <= 0:
                    break
                self.conn.send_data(stream_id, data[:window])
                data = data[window:]
            self.pending[stream_id][0] = data
            if not data:
                del self.pending[stream_id]
                if trailers:
                    self.conn.send_headers(stream_id, trailers, end_stream=True)
                elif end_stream:
                    self.conn.end_stream(stream_id)
        self.sock.sendall(self.conn.data_to_send())

    def forget(self, stream_id):
        self.pending.pop(stream_id, None)


def serve(port, record=None):
    lock = threading.Lock()
    server = listener(port)
    print("listening", flush=True)

    def handle(sock):
        conn = H2Connection(config=H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        sender = Sender(conn, sock)
        requests = {}  # stream id -> (headers, body)
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        requests[event.stream_id] = (dict(event.headers), bytearray())
                    elif isinstance(event, DataReceived):
                        requests[event.stream_id][1].extend(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded):
                        headers, body = requests.pop(event.stream_id)
                        answer(conn, sender, event.stream_id, headers, bytes(body))
                    elif isinstance(event, StreamReset):
                        requests.pop(event.stream_id, None)
                        sender.forget(event.stream_id)
                    elif isinstance(event, WindowUpdated):
                        pass
                    elif isinstance(event, ConnectionTerminated):
                        return
                sender.flush()
        except (OSError, ProtocolError):
            return
        finally:
            sock.close()

    def answer(conn, sender, stream_id, headers, body):
        path = headers.get(":path", "")
        message = unframe(body)
        if record:
            with lock, open(record, "a") as out:
                length = len(body) if message is None else len(message)
                out.write(json.dumps({"path": path, "authority": headers.get(":authority"), "headers": headers, "message": length}) + "\n")
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc"), ("x-echo-path", path)])
        sender.send(stream_id, frame(body if message is None else message), trailers=[("grpc-status", "0")])

    while True:
        sock, _ = server.accept()
        threading.Thread(target=handle, args=(sock,), daemon=True).start()


def call_details(host, port, path, message, authority=None, timeout=10):
    """One unary call; everything the test may want to look at, as a dict."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect((host, port))
    conn = H2Connection(config=H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, [
        (":method", "POST"), (":scheme", "http"), (":authority", authority or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")), (":path", path),
        ("content-type", "application/grpc"), ("te", "trailers"),
    ])
    sender = Sender(conn, sock)
    sender.send(stream_id, frame(message.encode() if isinstance(message, str) else message), end_stream=True)
    result = {"status": None, "grpc_status": None, "grpc_message": None, "body": "", "headers": {}, "reset": None}
    body = bytearray()
    done = False
    try:
        while not done:
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived) and event.stream_id == stream_id:
                    headers = dict(event.headers)
                    result["headers"] = headers
                    result["status"] = int(headers.get(":status", "0"))
                    # A trailers-only answer carries grpc-status in its headers.
                    result["grpc_status"] = headers.get("grpc-status")
                    result["grpc_message"] = headers.get("grpc-message")
                elif isinstance(event, DataReceived) and event.stream_id == stream_id:
                    body.extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, TrailersReceived) and event.stream_id == stream_id:
                    trailers = dict(event.headers)
                    result["grpc_status"] = trailers.get("grpc-status")
                    result["grpc_message"] = trailers.get("grpc-message")
                elif isinstance(event, StreamEnded) and event.stream_id == stream_id:
                    done = True
                elif isinstance(event, StreamReset) and event.stream_id == stream_id:
                    result["reset"] = int(event.error_code)
                    done = True
                elif isinstance(event, ConnectionTerminated):
                    done = True
            sender.flush()
    finally:
        sock.close()
    payload = unframe(bytes(body)) if result["headers"].get("content-type", "").startswith("application/grpc") else None
    result["body"] = (payload if payload is not None else bytes(body)).decode("utf-8", "replace")
    return result


def call(host, port, path, message, authority=None, timeout=10):
    """One unary call: (HTTP status, grpc-status, body)."""
    result = call_details(host, port, path, message, authority, timeout)
    return result["status"], result["grpc_status"], result["body"]


def main():
    mode = sys.argv[1]
    if mode == "serve":
        serve(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    elif mode == "call":
        authority = sys.argv[6] if len(sys.argv) > 6 else None
        print(json.dumps(call_details(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], authority)))
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
