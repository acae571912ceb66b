#!/usr/bin/env python3
"""Fuzz a running udpecho server with random datagrams from several sources and check every one.

usage: scripts/datagram-fuzz.py HOST:PORT METRICS_URL [--count N] [--seed S]

Sends COUNT datagrams (default 10000) of random sizes from 0 to 65507 bytes with random contents, each from one of
several sources (distinct loopback addresses and ports, and, when run as root, a source on port 1023 and one on port
2049, which the server's port guard must drop). Each datagram must come back byte for byte, or, from a guarded
source (or the fifth identical datagram in a row from one source: the loop guard), not at all. At the end the server's Prometheus counters must agree with what was sent. Loopback only;
bounded in count and time (every wait is at most 2 s, the whole run at most 10 minutes).
"""
import argparse
import os
import random
import socket
import sys
import time
import urllib.request


def metrics(url):
    samples = {}
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("metrics")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    target = (host, int(port))
    if not host.startswith("127."):
        sys.exit("datagram-fuzz.py: the target must be a loopback address")
    rng = random.Random(args.seed)
    print(f"seed {args.seed}", flush=True)

    sources = []
    for i in range(6):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.{i // 3}.{10 + i}", 0))
        s.settimeout(2)
        sources.append((s, True))
    guarded_ports = [1023, 2049] if os.geteuid() == 0 else [2049]
    for p in guarded_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.99", p))
        s.settimeout(0.05)
        sources.append((s, False))

    # The server's loop guard: the same bytes from the same source more than LOOP_LIMIT times in a row, each within
    # a second of the one before, are an echo loop and dropped. Random sizes include 0 one time in five, so a source
    # sometimes sends five empty datagrams in a row: those must be dropped, and counted under reason "loop".
    LOOP_LIMIT = 4
    runs = {}  # source socket -> (last payload, identical in a row, time of the last)

    before = metrics(args.metrics)
    echoed = dropped = looped = failures = 0
    sent_bytes = echoed_bytes = 0
    deadline = time.monotonic() + 600
    for n in range(args.count):
        if time.monotonic() > deadline:
            print("stopping: the 10-minute bound was reached", flush=True)
            break
        sock, answered = rng.choice(sources)
        size = rng.choice([0, 1, rng.randint(0, 1500), rng.randint(0, 65507), 65507])
        payload = rng.randbytes(size)
        now = time.monotonic()
        last, run, then = runs.get(sock, (None, 0, 0.0))
        run = run + 1 if payload == last and now - then <= 1 else 1
        runs[sock] = (payload, run, now)
        loop = answered and run > LOOP_LIMIT
        sock.settimeout(0.05 if loop or not answered else 2)
        sock.sendto(payload, target)
        sent_bytes += size
        try:
            reply, peer = sock.recvfrom(65536)
        except socket.timeout:
            reply = None
        if loop:
            if reply is None:
                looped += 1
            else:
                failures += 1
                print(f"datagram {n}: the same {size} bytes for the {run}th time in a row was answered", flush=True)
        elif answered:
            if reply == payload:
                echoed += 1
                echoed_bytes += size
            else:
                failures += 1
                print(f"datagram {n}: {size} bytes sent, got {None if reply is None else len(reply)}", flush=True)
        else:
            if reply is None:
                dropped += 1
            else:
                failures += 1
                print(f"datagram {n} from guarded port {sock.getsockname()[1]} was answered", flush=True)

    sent = echoed + dropped + looped + failures
    after = metrics(args.metrics)

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    checks = [
        ("received", delta('udpecho_datagrams_total{direction="received"}'), sent),
        ("echoed", delta('udpecho_datagrams_total{direction="echoed"}'), echoed),
        ("bytes received", delta('udpecho_bytes_total{direction="received"}'), sent_bytes),
        ("bytes echoed", delta('udpecho_bytes_total{direction="echoed"}'), echoed_bytes),
        ("dropped by the source-port guard", delta('udpecho_dropped_total{reason="source-port"}'), dropped),
        ("dropped by the loop guard", delta('udpecho_dropped_total{reason="loop"}'), looped),
    ]
    for label, got, want in checks:
        ok = got == want
        failures += 0 if ok else 1
        print(f"metrics {label}: {got:.0f} (expected {want}) {'ok' if ok else 'MISMATCH'}", flush=True)
    print(f"{echoed} echoed byte for byte, {dropped} dropped by the port guards, {looped} by the loop guard, "
          f"from {len(sources)} sources")
    print(f"{sent - failures} passed, {failures} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
