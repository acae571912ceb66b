#!/usr/bin/env python3
"""Sets up COUNT unauthenticated TWAMP test sessions (RFC 5357) on one control connection, for senders on
127.0.0.1 ports BASE..BASE+COUNT-1, starts them, prints the reflector's port, and holds the connection (the
sessions run) until its standard input closes. An independent control client for scripts/twamp-cost.sh.

usage: twamp-sessions.py HOST PORT BASE COUNT [SOURCE]   (SOURCE: the address to connect from, and so the
                                                         sessions' sender address)
"""
import socket
import struct
import sys
import time


def read(sock, count):
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            sys.exit(f"twamp-sessions: the server closed the connection after {len(data)} of {count} bytes")
        data += chunk
    return data


def main():
    host, port, base, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    source = (sys.argv[5], 0) if len(sys.argv) > 5 else None
    sock = socket.create_connection((host, port), timeout=10, source_address=source)
    greeting = read(sock, 64)
    modes = struct.unpack("!I", greeting[12:16])[0]
    if not modes & 1:
        sys.exit(f"twamp-sessions: the server offers modes {modes}, not unauthenticated")
    sock.sendall(struct.pack("!I", 1) + bytes(160))
    if read(sock, 48)[15] != 0:
        sys.exit("twamp-sessions: Server-Start refused")
    ntp_now = int((time.time() + 2208988800) * (1 << 32))
    reflector = None
    for index in range(count):
        request = (bytes([5, 4, 0, 0]) + bytes(8) + struct.pack("!HH", base + index, port) + bytes(32) + bytes(16)
                   + struct.pack("!IQQI", 0, ntp_now, 2 << 32, 0) + bytes(24))
        sock.sendall(request)
        accept = read(sock, 48)
        if accept[0] != 0:
            sys.exit(f"twamp-sessions: session {index} refused (Accept {accept[0]})")
        reflector = struct.unpack("!H", accept[2:4])[0]
    sock.sendall(bytes([2]) + bytes(31))
    if read(sock, 32)[0] != 0:
        sys.exit("twamp-sessions: Start-Sessions refused")
    print(reflector, flush=True)
    sys.stdin.read()
    sock.sendall(bytes([3, 0, 0, 0]) + struct.pack("!I", count) + bytes(24))
    sock.close()


if __name__ == "__main__":
    main()
