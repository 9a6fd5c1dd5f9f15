#!/usr/bin/env python3
"""Test peers for the integration tests: servers and clients that talk only to
addresses the test gave them (loopback or test network namespaces).

Servers (serve MODE PORT [RECORD [BIND]]: with RECORD, one line "accepted ADDR" is
appended to that file per accepted connection; BIND, comma-separated addresses,
listens on those only instead of every address):
  serve echo PORT            echo every byte back; half-close answered with FIN
  serve transfer PORT        read until the client's FIN, answer "<sha256 of what came>\n"
                             followed by the number of bytes the client asked for
  serve flood PORT           send pattern bytes without end, never read
Clients (print one JSON object on stdout):
  transfer HOST PORT UP DOWN send UP bytes, half-close, read the answer until EOF
  echo HOST PORT TEXT        one round trip
  many HOST PORT N [hold]    N connections open at once, each one round trip; with
                             "hold", print the result, then keep all N open until a
                             line arrives on stdin
  hold HOST PORT SECONDS     one connection, a round trip every 50 ms for SECONDS
  reset HOST PORT            one round trip, then more bytes and a reset (RST)
  probe HOST PORT TEXT       connect, send TEXT, read until EOF, reset or 10 s;
                             reports what happened instead of failing
  repeat HOST PORT TEXT SECONDS  a probe every 50 ms until SECONDS pass or a line
                             arrives on stdin; each attempt's time and outcome
  sameport HOST LPORT PORT...  from local port LPORT, one round trip to each PORT
                             in turn (closing each first), as clients that bind
                             their source port do; reports each outcome
"""
import hashlib
import json
import os
import resource
import socket
import struct
import sys
import threading
import time

CHUNK = 256 * 1024


def pattern_block():
    return bytes((i * 31 + 7) % 251 for i in range(CHUNK))


BLOCK = pattern_block()


def pattern_stream(total):
    """Deterministic bytes both ends can generate and hash."""
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield BLOCK[:n]
        sent += n


def pattern_sha(total):
    h = hashlib.sha256()
    for chunk in pattern_stream(total):
        h.update(chunk)
    return h.hexdigest()


def listener(port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(4096)
    return s


def serve_echo(conn):
    with conn:
        while True:
            data = conn.recv(CHUNK)
            if not data:
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)


def serve_transfer(conn):
    with conn:
        header = b""
        while not header.endswith(b"\n"):
            byte = conn.recv(1)
            if not byte:
                return
            header += byte
        down = int(header.strip())
        h = hashlib.sha256()
        while True:
            data = conn.recv(CHUNK)
            if not data:
                break
            h.update(data)
        conn.sendall(h.hexdigest().encode() + b"\n")
        for chunk in pattern_stream(down):
            conn.sendall(chunk)


def serve_flood(conn):
    with conn:
        try:
            while True:
                conn.sendall(BLOCK)
        except OSError:
            return


def bound_listener(address, port):
    """A listener on one address only (a service that chose loopback, say)."""
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    s.listen(4096)
    return s


def serve(mode, port, record=None, bind=None):
    handler = {"echo": serve_echo, "transfer": serve_transfer, "flood": serve_flood}[mode]
    sockets = [bound_listener(a, port) for a in bind.split(",")] if bind else [listener(port)]
    log = open(record, "a", buffering=1) if record else None
    lock = threading.Lock()

    def accept_on(s):
        while True:
            conn, addr = s.accept()
            if log is not None:
                with lock:
                    log.write(f"accepted {addr[0]} {addr[1]}\n")
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    for s in sockets[1:]:
        threading.Thread(target=accept_on, args=(s,), daemon=True).start()
    print("listening", flush=True)
    accept_on(sockets[0])


def connect(host, port):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect((host, port))
    return s


def client_transfer(host, port, up, down):
    s = connect(host, port)
    local_port = s.getsockname()[1]
    s.sendall(f"{down}\n".encode())
    for chunk in pattern_stream(up):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    received = bytearray()
    while True:
        data = s.recv(CHUNK)
        if not data:
            break
        received += data
    s.close()
    line, _, body = bytes(received).partition(b"\n")
    return {
        "local_port": local_port,
        "upload_ok": line.decode() == pattern_sha(up),
        "download_ok": len(body) == down and hashlib.sha256(body).hexdigest() == pattern_sha(down),
        "download_bytes": len(body),
    }


def client_echo(host, port, text):
    s = connect(host, port)
    local_port = s.getsockname()[1]
    s.sendall(text.encode())
    data = b""
    while len(data) < len(text):
        chunk = s.recv(CHUNK)
        if not chunk:
            break
        data += chunk
    s.close()
    return {"local_port": local_port, "ok": data.decode() == text}


def client_many(host, port, n, hold=False):
    sockets = []
    for i in range(n):
        sockets.append(connect(host, port))
    ports = [s.getsockname()[1] for s in sockets]
    ok = 0
    for i, s in enumerate(sockets):
        message = f"hello {i}\n".encode()
        s.sendall(message)
    for i, s in enumerate(sockets):
        message = f"hello {i}\n".encode()
        data = b""
        while len(data) < len(message):
            chunk = s.recv(CHUNK)
            if not chunk:
                break
            data += chunk
        ok += data == message
    if hold:
        print(json.dumps({"local_ports": ports, "ok": ok}), flush=True)
        sys.stdin.readline()
        # Every connection still works after being held open.
        for i, s in enumerate(sockets):
            s.sendall(b"bye\n")
        still = 0
        for s in sockets:
            data = b""
            while len(data) < 4:
                chunk = s.recv(CHUNK)
                if not chunk:
                    break
                data += chunk
            still += data == b"bye\n"
        for s in sockets:
            s.close()
        return {"still_ok": still}
    for s in sockets:
        s.close()
    return {"local_ports": ports, "ok": ok}


def client_hold(host, port, seconds):
    s = connect(host, port)
    local_port = s.getsockname()[1]
    deadline = time.time() + seconds
    rounds = 0
    try:
        while time.time() < deadline:
            message = f"ping {rounds}\n".encode()
            s.sendall(message)
            data = b""
            while len(data) < len(message):
                chunk = s.recv(CHUNK)
                if not chunk:
                    return {"local_port": local_port, "ok": False, "rounds": rounds, "error": "closed"}
                data += chunk
            if data != message:
                return {"local_port": local_port, "ok": False, "rounds": rounds, "error": "corrupted"}
            rounds += 1
            time.sleep(0.05)
    except OSError as error:
        return {"local_port": local_port, "ok": False, "rounds": rounds, "error": str(error)}
    s.close()
    return {"local_port": local_port, "ok": True, "rounds": rounds}


def client_reset(host, port):
    """Resets mid-stream: after the proxy has carried a round trip, with bytes
    still in flight both ways."""
    s = connect(host, port)
    local_port = s.getsockname()[1]
    s.sendall(b"first")
    if s.recv(5) == b"":
        raise SystemExit("no echo before the reset")
    s.sendall(b"x" * 100000)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    return {"local_port": local_port}


def client_repeat(host, port, text, seconds):
    """A probe every 50 ms for SECONDS, until a line arrives on stdin: each
    attempt's wall-clock time and outcome ("echoed" or the error)."""
    attempts = []
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    deadline = time.time() + seconds
    while time.time() < deadline and not stop.is_set():
        started = time.time()
        result = client_probe(host, port, text)
        attempts.append([started, "echoed" if result["received"] == text else (result["error"] or "short")])
        stop.wait(0.05)
    return {"attempts": attempts}


def client_probe(host, port, text):
    """What a plain TCP client sees: refused, reset, closed or answered."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(10)
    result = {"connected": False, "received": "", "error": None, "local_port": None}
    try:
        s.connect((host, port))
        result["connected"] = True
        result["local_port"] = s.getsockname()[1]
        s.sendall(text.encode())
        data = b""
        while len(data) < len(text):
            chunk = s.recv(CHUNK)
            if not chunk:
                result["error"] = "closed"
                break
            data += chunk
        result["received"] = data.decode(errors="replace")
    except socket.timeout:
        result["error"] = "timeout"
    except ConnectionRefusedError:
        result["error"] = "refused"
    except ConnectionResetError:
        result["error"] = "reset"
    except OSError as error:
        result["error"] = f"oserror: {error}"
    finally:
        s.close()
    return result


def client_sameport(host, local_port, ports):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    outcomes = []
    for port in ports:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(10)
        try:
            s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
            s.connect((host, port))
            text = f"to {port}".encode()
            s.sendall(text)
            data = b""
            while len(data) < len(text):
                chunk = s.recv(CHUNK)
                if not chunk:
                    break
                data += chunk
            outcomes.append("ok" if data == text else f"got {data!r}")
        except OSError as error:
            outcomes.append(f"{type(error).__name__}: {error}")
        finally:
            s.close()
    return {"local_port": local_port, "outcomes": outcomes}


def raise_file_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv):
    raise_file_limit()
    if argv[0] == "serve":
        serve(argv[1], int(argv[2]), argv[3] if len(argv) > 3 and argv[3] else None, argv[4] if len(argv) > 4 else None)
        return
    command, host, port = argv[0], argv[1], int(argv[2])
    if command == "transfer":
        result = client_transfer(host, port, int(argv[3]), int(argv[4]))
    elif command == "echo":
        result = client_echo(host, port, argv[3])
    elif command == "many":
        result = client_many(host, port, int(argv[3]), hold=len(argv) > 4 and argv[4] == "hold")
    elif command == "hold":
        result = client_hold(host, port, float(argv[3]))
    elif command == "reset":
        result = client_reset(host, port)
    elif command == "probe":
        result = client_probe(host, port, argv[3])
    elif command == "sameport":
        result = client_sameport(host, port, [int(a) for a in argv[3:]])
    elif command == "repeat":
        result = client_repeat(host, port, argv[3], float(argv[4]))
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
