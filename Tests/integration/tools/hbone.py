#!/usr/bin/env python3
"""A small HBONE client (HTTP/2 CONNECT over mutual TLS 1.3) for the integration
tests: it speaks to an agent's tunnel port directly, the way another node's
agent would, and also misbehaves on purpose.

As a library: make_leaf() issues a workload certificate from a node
intermediate (what `agentctl ca issue-intermediate` writes).

As a command (prints one JSON object on stdout; talks only to the HOST given):
  connect  --host H [--port 15008] --cert C --key K --ca BUNDLE --authority A
           [--method CONNECT] [--send TEXT]
           one request; reports the response status, the server's URI SAN and,
           for a 200 with --send, what came back on the stream
  streams  ... --authority A --count N
           after the SETTINGS exchange, N CONNECT streams at once without
           waiting (raw frames, so the client's own limits do not apply);
           counts what the server answered; then waits for a line on stdin
  noread   ... --authority A
           CONNECT with huge flow-control windows, then never reads the socket;
           prints the status, waits for a line on stdin
  nocert   --host H [--port] --ca BUNDLE --authority A
           TLS without a client certificate, then a CONNECT
  garbage  --host H [--port]
           random bytes instead of a TLS handshake
"""
import argparse
import datetime
import json
import os
import socket
import ssl
import struct
import sys
import time
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# ---------------------------------------------------------------- certificates

def make_leaf(intermediate_dir, uri, out_prefix, lifetime=3600):
    """A workload SVID for `uri` signed by the node intermediate in
    intermediate_dir: ECDSA P-256, exactly one URI SAN, keyUsage
    digitalSignature (critical), EKU serverAuth+clientAuth. Writes
    PREFIX.pem (leaf + intermediate) and PREFIX.key; returns both paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    intermediate_dir = Path(intermediate_dir)
    issuer_pem = (intermediate_dir / "intermediate.pem").read_bytes()
    issuer = x509.load_pem_x509_certificate(issuer_pem)
    issuer_key = serialization.load_pem_private_key((intermediate_dir / "intermediate.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(seconds=lifetime))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )
    chain = Path(f"{out_prefix}.pem")
    key_path = Path(f"{out_prefix}.key")
    chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + issuer_pem)
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return chain, key_path


# ---------------------------------------------------------------- connections

def tls_connect(host, port, ca, cert=None, key=None, timeout=10):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw)
    except BaseException:
        raw.close()
        raise


def peer_identity(sock):
    cert = sock.getpeercert() or {}
    uris = [value for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    return uris[0] if len(uris) == 1 else uris or None


class H2Client:
    """h2's state machine over a blocking TLS socket."""

    def __init__(self, sock, big_windows=False, validate=True):
        import h2.config
        import h2.connection
        import h2.settings
        self.sock = sock
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8",
                                           validate_outbound_headers=validate, normalize_outbound_headers=validate)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if big_windows:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
            self.conn.increment_flow_control_window(2**31 - 1 - 65535)
        self.flush()
        self.responses = {}
        self.data = {}
        self.ended = set()
        self.resets = {}
        self.goaway = None
        self.closed = False
        self.settings_received = False

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self, timeout):
        import h2.events
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not chunk:
            self.closed = True
            return False
        for event in self.conn.receive_data(chunk):
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.data.setdefault(event.stream_id, bytearray()).extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets[event.stream_id] = int(event.error_code)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = int(event.error_code)
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                self.settings_received = True
        self.flush()
        return True

    def request(self, method, authority, end_stream=False):
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":authority", authority)]
        if method != "CONNECT":
            headers += [(":scheme", "https"), (":path", "/")]
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self.flush()
        return sid

    def wait(self, condition, timeout=10):
        deadline = time.time() + timeout
        while not condition() and time.time() < deadline and not self.closed:
            self.pump(max(0.05, deadline - time.time()))
        return condition()


def command_connect(args):
    result = {"status": None, "peer_identity": None, "alpn": None, "echo": None, "reset": None, "goaway": None, "error": None}
    try:
        sock = tls_connect(args.host, args.port, args.ca, args.cert, args.key)
    except (ssl.SSLError, OSError) as error:
        result["error"] = f"handshake: {error}"
        return result
    result["peer_identity"] = peer_identity(sock)
    result["alpn"] = sock.selected_alpn_protocol()
    try:
        client = H2Client(sock, validate=False)
        sid = client.request(args.method, args.authority)
        client.wait(lambda: sid in client.responses or sid in client.resets or client.goaway is not None)
        if sid in client.responses:
            result["status"] = int(client.responses[sid].get(":status", 0))
        result["reset"] = client.resets.get(sid)
        result["goaway"] = client.goaway
        if result["status"] == 200 and args.send is not None:
            payload = args.send.encode()
            client.conn.send_data(sid, payload)
            client.flush()
            client.wait(lambda: len(client.data.get(sid, b"")) >= len(payload) or sid in client.resets)
            client.conn.end_stream(sid)
            client.flush()
            client.wait(lambda: sid in client.ended or sid in client.resets)
            result["echo"] = bytes(client.data.get(sid, b"")).decode(errors="replace")
            result["ended"] = sid in client.ended
    except (ssl.SSLError, OSError) as error:
        result["error"] = f"{type(error).__name__}: {error}"
    except Exception as error:  # h2 protocol errors: report, do not crash
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        sock.close()
    return result


# ---------------------------------------------------------------- raw frames

def frame(kind, flags, stream_id, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


class FrameReader:
    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""
        self.closed = False

    def next(self, timeout):
        deadline = time.time() + timeout
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    kind, flags = self.buffer[3], self.buffer[4]
                    sid = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                    payload = self.buffer[9:9 + length]
                    self.buffer = self.buffer[9 + length:]
                    return kind, flags, sid, payload
            remaining = deadline - time.time()
            if remaining <= 0 or self.closed:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            except (ssl.SSLError, OSError):
                self.closed = True
                return None
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk


def command_streams(args):
    """Opens args.count CONNECT streams at once, beyond any advertised limit."""
    import hpack
    sock = tls_connect(args.host, args.port, args.ca, args.cert, args.key)
    reader = FrameReader(sock)
    sock.sendall(PREFACE + frame(0x4, 0, 0))  # our (empty) SETTINGS
    advertised = None
    got_ack = got_settings = False
    deadline = time.time() + 10
    while not (got_ack and got_settings) and time.time() < deadline:
        f = reader.next(deadline - time.time())
        if f is None:
            break
        kind, flags, sid, payload = f
        if kind == 0x4 and not flags & 1:
            got_settings = True
            for i in range(0, len(payload), 6):
                ident, value = struct.unpack(">HI", payload[i:i + 6])
                if ident == 0x3:
                    advertised = value
            sock.sendall(frame(0x4, 1, 0))  # ACK: the server's limits are now in force
        elif kind == 0x4:
            got_ack = True
    encoder = hpack.Encoder()
    burst = bytearray()
    for i in range(args.count):
        block = encoder.encode([(":method", "CONNECT"), (":authority", args.authority)])
        burst += frame(0x1, 0x4, 1 + 2 * i, block)  # HEADERS, END_HEADERS
    result = {"advertised_max_concurrent_streams": advertised, "sent": args.count, "ok_responses": 0,
              "other_responses": 0, "resets": 0, "goaway": None, "goaway_error": None, "closed": False, "error": None}
    try:
        sock.sendall(bytes(burst))
    except (ssl.SSLError, OSError) as error:
        result["error"] = f"send: {error}"
    decoder = hpack.Decoder()
    quiet_until = time.time() + 3
    hard_deadline = time.time() + 20
    while time.time() < min(quiet_until, hard_deadline):
        f = reader.next(min(quiet_until, hard_deadline) - time.time())
        if f is None:
            break
        quiet_until = time.time() + 2
        kind, flags, sid, payload = f
        if kind == 0x1:
            if flags & 0x8:  # PADDED
                pad = payload[0]
                payload = payload[1:len(payload) - pad]
            if flags & 0x20:  # PRIORITY
                payload = payload[5:]
            headers = dict(decoder.decode(payload))
            status = headers.get(":status") or headers.get(b":status")
            if str(status if isinstance(status, str) else status.decode()) == "200":
                result["ok_responses"] += 1
            else:
                result["other_responses"] += 1
        elif kind == 0x3:
            result["resets"] += 1
        elif kind == 0x7:
            result["goaway"] = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            result["goaway_error"] = int.from_bytes(payload[4:8], "big")
        elif kind == 0x6 and not flags & 1:
            sock.sendall(frame(0x6, 1, 0, payload))
        elif kind == 0x4 and not flags & 1:
            for i in range(0, len(payload), 6):
                ident, value = struct.unpack(">HI", payload[i:i + 6])
                if ident == 0x3:
                    result["advertised_max_concurrent_streams"] = value
            sock.sendall(frame(0x4, 1, 0))
    result["closed"] = reader.closed
    print(json.dumps(result), flush=True)
    sys.stdin.readline()
    sock.close()
    return None


def command_sequence(args):
    """args.count CONNECT streams on one connection, never more open at once
    than the server advertised: each sends a line, reads its echo, half-closes,
    and waits for the server's END_STREAM before its slot is used again."""
    sock = tls_connect(args.host, args.port, args.ca, args.cert, args.key)
    client = H2Client(sock)
    client.wait(lambda: client.settings_received, timeout=5)
    limit = client.conn.remote_settings.max_concurrent_streams
    result = {"limit": limit, "count": args.count, "echoed": 0, "ended": 0, "other": 0, "resets": 0, "goaway": None, "error": None}
    open_streams = {}
    started = 0
    deadline = time.time() + 120
    try:
        while (started < args.count or open_streams) and time.time() < deadline and client.goaway is None and not client.closed:
            while started < args.count and len(open_streams) < limit:
                sid = client.request("CONNECT", args.authority)
                open_streams[sid] = f"stream {started}\n".encode()
                started += 1
            client.pump(1)
            for sid, line in list(open_streams.items()):
                if sid in client.resets:
                    result["resets"] += 1
                    del open_streams[sid]
                    continue
                response = client.responses.get(sid)
                if response is None:
                    continue
                if response.get(":status") != "200":
                    result["other"] += 1
                    del open_streams[sid]
                    continue
                if sid not in client.data and line is not None:
                    client.conn.send_data(sid, line, end_stream=True)
                    open_streams[sid] = None
                    client.flush()
                if sid in client.ended:
                    if bytes(client.data.get(sid, b"")).startswith(b"stream "):
                        result["echoed"] += 1
                    result["ended"] += 1
                    del open_streams[sid]
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    result["goaway"] = client.goaway
    sock.close()
    return result


def command_noread(args):
    sock = tls_connect(args.host, args.port, args.ca, args.cert, args.key)
    client = H2Client(sock, big_windows=True)
    sid = client.request("CONNECT", args.authority)
    client.wait(lambda: sid in client.responses or sid in client.resets or client.goaway is not None)
    status = int(client.responses[sid].get(":status", 0)) if sid in client.responses else None
    # Make the server's socket buffers fill: from here on nothing is read.
    print(json.dumps({"status": status, "read_bytes": len(client.data.get(sid, b""))}), flush=True)
    sys.stdin.readline()
    sock.close()
    return None


def command_nocert(args):
    result = {"handshake_ok": False, "status": None, "error": None}
    try:
        sock = tls_connect(args.host, args.port, args.ca)
    except (ssl.SSLError, OSError) as error:
        result["error"] = f"handshake: {error}"
        return result
    result["handshake_ok"] = True  # TLS 1.3: the server judges our (missing) certificate after this
    try:
        client = H2Client(sock)
        sid = client.request("CONNECT", args.authority)
        client.wait(lambda: sid in client.responses or sid in client.resets or client.goaway is not None)
        if sid in client.responses:
            result["status"] = int(client.responses[sid].get(":status", 0))
        result["closed"] = client.closed
    except Exception as error:
        result["error"] = f"{type(error).__name__}: {error}"
    finally:
        sock.close()
    return result


def command_garbage(args):
    result = {"closed": False, "received_bytes": 0, "error": None}
    s = socket.create_connection((args.host, args.port), timeout=10)
    try:
        s.sendall(os.urandom(1024) + b"\x16\x03\x01\xff\xff" + os.urandom(60000))
        deadline = time.time() + 10
        while time.time() < deadline:
            s.settimeout(deadline - time.time())
            data = s.recv(65536)
            if not data:
                result["closed"] = True
                break
            result["received_bytes"] += len(data)
    except socket.timeout:
        result["error"] = "timeout"
    except ConnectionResetError:
        result["closed"] = True
        result["error"] = "reset"
    except OSError as error:
        result["closed"] = True
        result["error"] = str(error)
    finally:
        s.close()
    return result


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["connect", "streams", "sequence", "noread", "nocert", "garbage"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=15008)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ca")
    parser.add_argument("--authority", default="")
    parser.add_argument("--method", default="CONNECT")
    parser.add_argument("--send")
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args(argv)
    result = {
        "connect": command_connect, "streams": command_streams, "sequence": command_sequence, "noread": command_noread,
        "nocert": command_nocert, "garbage": command_garbage,
    }[args.command](args)
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
