#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora into Fuzz/corpus/TARGET/: one well-formed input per shape each parser
meets in use (and a few near misses), so that the fuzzer starts from the paths that matter. The files are committed;
run this again after changing it. Each STAMP seed starts with the mode byte the target reads first (bit 0
authenticated, 1 stateful or Location, 2 PTP or Class of Service, 3 honour Class of Service, 4 IPv6)."""
import hashlib
import hmac
import os
import shutil
import socket
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Fuzz", "corpus")
KEY = b"udpecho fuzzing key"  # FuzzHarness's key: signed seeds reach past verification


def tlv(kind, value, flags=0):
    return struct.pack("!BBH", flags, kind, len(value)) + value


def stamp_test(seq=1, tlvs=b"", auth=False):
    if auth:
        base = struct.pack("!I12xQH", seq, 0xE8_00_00_00_00_00_00_00, 0x8001) + bytes(112 - 4 - 12 - 8 - 2)
        base = bytearray(base)
        base[96:112] = hmac.new(KEY, bytes(base[:96]), hashlib.sha256).digest()[:16]
        return bytes(base) + tlvs
    return struct.pack("!IQH", seq, 0xE8_00_00_00_00_00_00_00, 0x8001) + bytes(44 - 14) + tlvs


def stamp_reply(seq=1, auth=False, tlvs=b""):
    if auth:
        body = bytearray(112)
        struct.pack_into("!I", body, 0, 9)
        struct.pack_into("!Q", body, 16, 0xE9_00_00_00_00_00_00_00)
        struct.pack_into("!Q", body, 40, 0xE8_00_00_00_00_00_00_00)
        struct.pack_into("!I", body, 48, seq)
        struct.pack_into("!Q", body, 64, 0xE8_00_00_00_00_00_00_01)
        body[96:112] = hmac.new(KEY, bytes(body[:96]), hashlib.sha256).digest()[:16]
        return bytes(body) + tlvs
    body = bytearray(44)
    struct.pack_into("!IQH", body, 0, 9, 0xE9_00_00_00_00_00_00_00, 0x8001)
    struct.pack_into("!Q", body, 16, 0xE8_00_00_00_00_00_00_00)
    struct.pack_into("!I", body, 24, seq)
    struct.pack_into("!Q", body, 28, 0xE8_00_00_00_00_00_00_01)
    body[42] = 64
    return bytes(body) + tlvs


def cmsg(level, kind, data):
    header = struct.pack("@QiI", 16 + len(data), level, kind)  # cmsghdr: size_t len, int level, int type
    padded = data + bytes((-len(data)) % 8)
    return header + padded


def inet_sum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def frame(source, destination, port, payload, tos=0, ttl=64, fragment=0x4000, vlans=0):
    """An Ethernet frame with a UDP datagram from port 40000, checksums right (the XDP target's input after its
    server byte). IPv6 when the addresses have a colon."""
    ipv6 = ":" in source
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    s, d = socket.inet_pton(family, source), socket.inet_pton(family, destination)
    length = 8 + len(payload)
    pseudo = s + d + (struct.pack("!IxxxB", length, 17) if ipv6 else struct.pack("!HH", 17, length))
    check = ~inet_sum(pseudo + struct.pack("!HHHH", 40000, port, length, 0) + payload) & 0xFFFF or 0xFFFF
    udp = struct.pack("!HHHH", 40000, port, length, check) + payload
    if ipv6:
        l3 = struct.pack("!IHBB", 0x60000000, len(udp), 17, 61) + s + d + udp
    else:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(udp), 1, fragment, ttl, 17, 0, s, d)
        l3 = header[:10] + struct.pack("!H", ~inet_sum(header) & 0xFFFF) + header[12:] + udp
    tags = b"".join(struct.pack("!HH", 0x8100, 100 + i) for i in range(vlans))
    ethertype = struct.pack("!H", 0x86DD if ipv6 else 0x0800)
    return bytes.fromhex("020000000002020000000001") + tags + ethertype + l3


def seeds():
    location4 = tlv(2, struct.pack("!HH", 0, 0) + bytes([1, 4]) + bytes(4) + bytes([3, 4]) + bytes(4))
    location6 = tlv(2, struct.pack("!HH", 0, 0) + bytes([2, 16]) + bytes(16))
    cos = tlv(4, struct.pack("!HH", 46 << 10, 0))
    padding = tlv(1, bytes(20))
    hmac_tlv = tlv(8, bytes(16))
    yield "stamp-reflector", "unauthenticated", b"\x00" + stamp_test()
    yield "stamp-reflector", "twamp-light-14", b"\x00" + stamp_test()[:14]
    yield "stamp-reflector", "stateful-ptp", b"\x06" + stamp_test()
    yield "stamp-reflector", "tlvs", b"\x08" + stamp_test(tlvs=padding + location4 + cos + hmac_tlv)
    yield "stamp-reflector", "tlvs-ipv6", b"\x18" + stamp_test(tlvs=location6 + cos)
    yield "stamp-reflector", "authenticated", b"\x01" + stamp_test(auth=True)
    yield "stamp-reflector", "authenticated-tlvs", b"\x03" + stamp_test(auth=True, tlvs=cos + hmac_tlv)
    yield "stamp-reflector", "two-hmacs", b"\x00" + stamp_test(tlvs=hmac_tlv + hmac_tlv)
    yield "stamp-sender", "reply", b"\x00" + stamp_reply()
    yield "stamp-sender", "reply-38", b"\x00" + stamp_reply()[:38]
    yield "stamp-sender", "echoed", b"\x00" + stamp_test()
    yield "stamp-sender", "reply-tlvs", b"\x06" + stamp_reply(tlvs=location4 + cos)
    yield "stamp-sender", "authenticated", b"\x01" + stamp_reply(auth=True)
    get = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Prometheus/2.45\r\n\r\n"
    yield "metrics-request", "get", get
    yield "metrics-request", "pipelined", get * 3
    yield "metrics-request", "http10", b"GET /metrics HTTP/1.0\r\n\r\n"
    yield "metrics-request", "close", b"GET /metrics?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n"
    yield "metrics-request", "not-found", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield "metrics-request", "post-chunked", (
        b"POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    )
    yield "metrics-request", "post-length", b"POST /metrics HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"
    yield "peers-file", "list", (
        b"# the fleet\n127.0.0.2:40001\n[::1]:40002\nlocalhost\n  10.0.0.1:862  # with a comment\n\n"
    )
    yield "peers-file", "bad-lines", b"127.0.0.1:99999\n[::1\nhost:port:extra\n\x01\x02\n"
    for name, text in [("ipv4", "127.0.0.1:1337"), ("ipv6", "[::1]:862"), ("port", ":0"), ("name", "localhost:7"),
                       ("ms", "500ms"), ("s", "2.5s"), ("m", "1m"), ("us", "250us"), ("prefix4", "10.0.0.0/8"),
                       ("prefix6", "2001:db8::/32"), ("ecn", "ect0"), ("bare", "192.0.2.1")]:
        yield "arguments", name, text.encode()
    report = bytes(16) + b"UDPE-TOS" + bytes(4)
    yield "marking-report", "request", report + bytes(36)
    yield "marking-report", "filled", bytes(16) + b"UDPE-TOS" + bytes([3, 0xB8, 63, 0]) + bytes(4)
    yield "marking-report", "short", report[:20]
    pktinfo4 = struct.pack("@i4s4s", 2, socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    pktinfo6 = socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("@I", 1)
    timestamps = struct.pack("@qqqqqq", 1_700_000_000, 5, 0, 0, 0, 0)
    yield "control-messages", "received-v4", (
        cmsg(0, 8, pktinfo4) + cmsg(0, 2, struct.pack("@i", 64)) + cmsg(0, 1, b"\xb8")
        + cmsg(1, 37, timestamps) + cmsg(17, 104, struct.pack("@i", 1200))
    )
    yield "control-messages", "received-v6", (
        cmsg(41, 50, pktinfo6) + cmsg(41, 52, struct.pack("@i", 64)) + cmsg(41, 67, struct.pack("@i", 0xB8))
    )
    extended = struct.pack("@IBBBBII", 111, 2, 3, 3, 0, 0, 0) + socket.inet_aton("127.0.0.1") + bytes(12)
    yield "control-messages", "error-queue", cmsg(0, 11, extended) + cmsg(1, 37, timestamps)
    yield "control-messages", "short-length", struct.pack("@QiI", 8, 0, 8) + bytes(8)
    # TWAMP-Control (RFC 5357): a client's messages after the greeting, and a server's answers.
    setup = struct.pack("!I", 1) + bytes(160)
    request = bytes([5, 4, 0, 0]) + bytes(8) + struct.pack("!HH", 40000, 862) + bytes(32) + bytes(16) + \
        struct.pack("!IQQI", 0, 0xE9A5_0000_0000_0000, 2 << 32, 0) + bytes(24)
    start = bytes([2]) + bytes(31)
    stop = bytes([3, 0, 0, 0]) + struct.pack("!I", 1) + bytes(24)
    yield "twamp-control-server", "unauthenticated", b"\x00" + setup + request + start + stop
    yield "twamp-control-server", "authenticated", b"\x01" + request + start
    yield "twamp-control-server", "encrypted", b"\x03" + request + request + start
    greeting = bytes(12) + struct.pack("!I", 7) + bytes(32) + struct.pack("!I", 1024) + bytes(12)
    server_start = bytes(15) + b"\x00" + bytes(32)
    accept = bytes([0, 0]) + struct.pack("!H", 862) + bytes(16) + bytes(28)
    yield "twamp-control-client", "unauthenticated", bytes(12) + struct.pack("!I", 1) + bytes(48) + \
        server_start + accept + bytes(32)
    yield "twamp-control-client", "keyed", greeting + server_start + accept + bytes(32)
    yield "twamp-control-client", "refused", bytes(12) + struct.pack("!I", 1) + bytes(48) + bytes(15) + b"\x01" + \
        bytes(32)
    yield "twamp-reflector", "unauthenticated", b"\x00" + struct.pack("!IQH", 1, 0xE9A5_0000_0000_0000, 0)
    yield "twamp-reflector", "padded-ipv6", b"\x04" + struct.pack("!IQH", 1, 0xE9A5_0000_0000_0000, 0) + bytes(30)
    yield "twamp-reflector", "authenticated", b"\x01" + bytes(48)
    yield "twamp-reflector", "encrypted", b"\x02" + bytes(64)
    # OWAMP-Control (RFC 4656): a client's requests (one slot), start, stop (one session, one skipped range) and fetch.
    slot = bytes([0]) + bytes(7) + struct.pack("!Q", 0x028F_5C28)
    ow_request = bytes([1, 4, 0, 1]) + struct.pack("!II", 1, 10) + struct.pack("!HH", 40000, 0) + bytes(48) + \
        struct.pack("!IQQI", 0, 0xE9A5_0000_0000_0000, 1 << 32, 0) + bytes(24)
    ow_send = bytes([1, 4, 1, 0]) + struct.pack("!II", 1, 10) + struct.pack("!HH", 0, 40000) + bytes(32) + \
        bytes(range(16)) + struct.pack("!IQQI", 0, 0xE9A5_0000_0000_0000, 1 << 32, 0) + bytes(24)
    ow_stop = bytes([3, 0, 0, 0]) + struct.pack("!I", 1) + bytes(8) + bytes(16) + struct.pack("!II", 10, 1) + \
        struct.pack("!II", 2, 3) + bytes(16)
    fetch = bytes([4]) + bytes(7) + struct.pack("!II", 0, 0xFFFF_FFFF) + bytes(16) + bytes(16)
    yield "owamp-control-server", "unauthenticated", b"\x00" + setup + ow_request + slot + bytes(16) + \
        ow_send + slot + bytes(16) + start + ow_stop + fetch
    yield "owamp-control-server", "authenticated", b"\x01" + ow_request + slot + bytes(16) + start + ow_stop
    yield "owamp-control-server", "encrypted", b"\x03" + ow_send + slot + bytes(16) + start + fetch
    yield "owamp-messages", "stop-sessions", ow_stop
    yield "owamp-messages", "fetch-ack", bytes([0, 1, 0, 0]) + struct.pack("!III", 10, 1, 10) + bytes(16)
    yield "owamp-messages", "records", struct.pack("!IHHQQB", 3, 0x0101, 0x0101, 0xE9A5 << 48, 0xE9A5 << 48 | 99, 255) * 4
    yield "owamp-test-packet", "unauthenticated", b"\x00" + struct.pack("!IQH", 3, 0xE9A5_0000_0000_0000, 0x0101)
    yield "owamp-test-packet", "padded", b"\x10" + struct.pack("!IQH", 3, 0xE9A5_0000_0000_0000, 0x0101) + bytes(4)
    yield "owamp-test-packet", "authenticated", b"\x01" + bytes(48)
    yield "owamp-test-packet", "encrypted", b"\x03" + bytes(48)
    yield "key-file", "pfstore", b"# made by pfstore\nalice 636f727265637420686f727365\nbob\tABCDEF\n\n"
    yield "key-file", "bad", b"alice 636\nbob\ncarol zz\n"
    yield "exporter-config", "modules", (b"---\nmodules:\n  echo:\n    protocol: echo\n    count: 10\n    interval: 100ms\n"
        b"  stamp_ef:\n    protocol: stamp\n    dscp: 46\n    ecn: ect0\n    fail_if_loss_above: 0.05\n"
        b"  tw:\n    protocol: twamp\n    mode: authenticated\n    key_file: /k\n"
        b"allow:\n  - 192.0.2.0/24\n  - \"2001:db8::/32\"\n  - router1.example.net\n"
        b"limits:\n  concurrent_probes: 4\n"
        b"targets:\n  - target: 192.0.2.1:862\n    module: stamp_ef\n    every: 10s\n")
    yield "exporter-config", "flow", b"allow: [192.0.2.0/24, 'x.example']\nmodules: {}\n# c\n"
    yield "exporter-request", "probe", b"/probe?target=192.0.2.1:7&module=echo\nX-Prometheus-Scrape-Timeout-Seconds: 2.5"
    yield "exporter-request", "ipv6", b"/probe?target=%5B2001:db8::1%5D&module=stamp"
    yield "exporter-request", "name", b"/probe?target=router1.example.net&module=stamp&x=1"


    # The XDP program: the first byte picks the server (0 echo on 198.51.100.1:7000, 1 echo on [2001:db8::1]:7000,
    # 2 STAMP on 198.51.100.1:862, 3 echo without guards; +4 the harness rewrites the IPv4 header checksum, +8 the
    # UDP checksum, so that mutations get past them).
    v4, v6 = ("192.0.2.2", "198.51.100.1"), ("2001:db8::2", "2001:db8::1")
    yield "xdp-program", "echo4-hello", b"\x00" + frame(*v4, 7000, b"hello, udpecho")
    yield "xdp-program", "echo4-tos-ttl", b"\x00" + frame(*v4, 7000, b"x" * 100, tos=41, ttl=17)
    yield "xdp-program", "echo4-vlan2", b"\x00" + frame(*v4, 7000, b"tagged", vlans=2)
    yield "xdp-program", "echo4-1400", b"\x00" + frame(*v4, 7000, bytes(range(256)) * 5 + b"y" * 120)
    yield "xdp-program", "echo4-fragment", b"\x00" + frame(*v4, 7000, b"frag", fragment=0x2000)
    yield "xdp-program", "echo4-hello-fixed", b"\x0c" + frame(*v4, 7000, b"hello, udpecho")
    yield "xdp-program", "echo6-hello", b"\x01" + frame(*v6, 7000, b"hello over IPv6")
    yield "xdp-program", "echo6-600", b"\x01" + frame(*v6, 7000, b"z" * 600)
    yield "xdp-program", "echo6-hello-fixed", b"\x0d" + frame(*v6, 7000, b"hello over IPv6")
    base = struct.pack("!IQHH", 5, 0xE0000000_00000000, 0x8001, 0) + bytes(28)
    tlvs = tlv(1, b"ABCDE") + tlv(3, bytes(4)) + tlv(4, struct.pack("!HH", 46 << 10, 0)) + tlv(200, b"xyz")
    yield "xdp-program", "stamp4-base", b"\x02" + frame(*v4, 862, base)
    yield "xdp-program", "stamp4-tlvs", b"\x02" + frame(*v4, 862, base + tlvs)
    yield "xdp-program", "stamp4-tlvs-fixed", b"\x0e" + frame(*v4, 862, base + tlvs)
    short = struct.pack("!IQH", 9, 0xE0000000_00000000, 0x8001)  # a TWAMP-Light sender's 14 bytes: the frame grows
    yield "xdp-program", "stamp4-short", b"\x02" + frame(*v4, 862, short)
    location = tlv(2, bytes(4) + tlv(7, bytes(16)) + tlv(4, bytes(16)) + tlv(77, b"\x09"))
    yield "xdp-program", "stamp4-location-fixed", b"\x0e" + frame(*v4, 862, base + tlv(1, b"odd") + location)
    yield "xdp-program", "unguarded4-plain", b"\x03" + frame(*v4, 7000, b"from anywhere")
    yield "xdp-program", "unguarded4-plain-fixed", b"\x0f" + frame(*v4, 7000, b"from anywhere")
    yield "xdp-program", "unguarded4-multicast", b"\x03" + frame("224.0.0.9", "198.51.100.1", 7000, b"martian")
    # Frames past the test run's first buffer (3520 bytes), as a jumbo MTU's: a datagram that goes past it (passed
    # up), and ones that end inside it with more of the frame after them (an echo; a short STAMP packet that would
    # grow the frame's last buffer: passed up).
    yield "xdp-program", "echo4-jumbo-fixed", b"\x0c" + frame(*v4, 7000, bytes(range(256)) * 19 + b"j" * 136)
    yield "xdp-program", "echo6-trailer-fixed", b"\x0d" + frame(*v6, 7000, b"inside the first") + bytes(4000)
    yield "xdp-program", "stamp4-short-trailer", b"\x02" + frame(*v4, 862, short) + bytes(4000)


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    for target, name, data in seeds():
        os.makedirs(os.path.join(ROOT, target), exist_ok=True)
        with open(os.path.join(ROOT, target, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
