#!/usr/bin/env python3
"""A small HTTP/1.1 server for latency benchmarks: answers every request with a
fixed 200 and a short body, keeps connections alive unless the client says
`Connection: close`. One asyncio loop; fast enough that the path under test,
not the server, dominates request latency at modest concurrency.

usage: http_server.py PORT [PORT ...]   (binds :: dual-stack on each port)
"""
import asyncio
import socket
import sys

BODY = b"ok\n"
KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n" % len(BODY) + BODY
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" % len(BODY) + BODY


class HTTP(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end].lower(), self.buffer[end + 4:]
            if b"connection: close" in head:
                self.transport.write(CLOSE)
                self.transport.close()
                return
            self.transport.write(KEEP_ALIVE)


async def main(ports):
    loop = asyncio.get_running_loop()
    servers = []
    for port in ports:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::", port))
        sock.listen(1024)
        servers.append(await loop.create_server(HTTP, sock=sock))
    print("listening", *ports, flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main([int(port) for port in sys.argv[1:]]))
