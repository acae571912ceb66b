import Foundation
import TestSupport
import Testing

/// The `udpecho` executable that `swift test` built beside the test bundle.
let udpecho: String = {
    let bundle = URL(fileURLWithPath: try! FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
    return bundle.deletingLastPathComponent().appendingPathComponent("udpecho").path
}()

/// A few lines of Python as an independent UDP peer: an echo server on an ephemeral port that prints its port, and
/// that can misbehave: never answer (`silent`), lose every third datagram (`lossy`),
/// hold every reply 50 ms (`hold50`), or every second one 20 ms (`alternate20`), flip a byte of each reply (`flip`, the first; `flip-last`, the last),
/// answer twice (`dup`), swap each pair of replies (`reorder`), stop answering for 300 ms once, after its 500th
/// datagram (`stall`), cut every echo by its last byte (`cut1`), or answer half the datagrams, chosen at random
/// from a fixed seed (`half`).
let pythonEchoServer = """
    import random, socket, sys, time
    mode = sys.argv[1]
    chance = random.Random(4)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], flush=True)
    held, n = None, 0
    while True:
        data, peer = s.recvfrom(65535)
        n += 1
        if mode == "silent" or (mode == "lossy" and n % 3 == 0) or (mode == "half" and chance.random() < 0.5):
            continue
        if mode == "cut1" and data:
            data = data[:-1]
        if mode == "flip" and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        if mode == "flip-last" and data:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        if mode == "stall" and n == 500:
            time.sleep(0.3)
        if mode == "hold50":
            time.sleep(0.05)
        if mode == "alternate20" and n % 2 == 0:
            time.sleep(0.02)
        if mode == "reorder":
            if held is None:
                held = (data, peer)
                continue
            s.sendto(data, peer)
            data, peer = held
            held = None
        s.sendto(data, peer)
        if mode == "dup":
            s.sendto(data, peer)
    """

/// A Python client: sends datagrams of the given sizes to 127.0.0.1:PORT and checks each echo byte for byte.
let pythonEchoClient = """
    import os, socket, sys
    port = int(sys.argv[1])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    for size in map(int, sys.argv[2:]):
        payload = os.urandom(size)
        s.send(payload)
        reply = s.recv(65536)
        if reply != payload:
            print(f"size {size}: got {len(reply)} bytes, not the {size} sent", flush=True)
            sys.exit(1)
    print("all echoed", flush=True)
    """

/// A Python sender: `count` datagrams of `size` bytes to HOST:PORT, without waiting for replies.
let pythonBurst = """
    import socket, sys
    host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        s.sendto(bytes([i % 256]) * size, (host, port))
    print("sent", count, flush=True)
    """

/// Starts a Python peer and returns it with the port it printed.
func startPythonServer(_ mode: String) async throws -> (Spawned, Int) {
    try await startPythonPeer(pythonEchoServer, [mode])
}

/// Starts `script` with `arguments`, a Python peer whose first line is its port; returns it with the port.
func startPythonPeer(_ script: String, _ arguments: [String]) async throws -> (Spawned, Int) {
    let server = try Spawned(python, ["python3", "-c", script] + arguments)
    let line = try #require(
        await server.waitForLine { Int($0) != nil },
        "the Python peer did not start: \(server.errorText)"
    )
    return (server, Int(line)!)
}

/// Starts `udpecho server` with `arguments` (inside a network namespace if given) and returns it with the port from
/// its start line (text or JSON).
func startServer(_ arguments: [String], inNamespace namespace: String? = nil) async throws -> (Spawned, Int) {
    let server =
        if let namespace {
            try Spawned("/usr/sbin/ip", ["netns", "exec", namespace, udpecho, "server"] + arguments)
        } else {
            try Spawned(udpecho, ["server"] + arguments)
        }
    guard let line = await server.waitForLine({ $0.hasPrefix("running as ") || $0.contains("\"running\"") })
    else {
        throw StartError(output: server.errorText)
    }
    let port = line.firstMatch(of: /:(\d+)[\s"(]|:(\d+)$/).flatMap { Int($0.1 ?? $0.2 ?? "") }
    guard let port else { throw StartError(output: "no port in: \(line)") }
    return (server, port)
}

struct StartError: Error, CustomStringConvertible {
    var output: String
    var description: String { "udpecho server did not start: \(self.output)" }
}
