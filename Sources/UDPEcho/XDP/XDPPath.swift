import CUDPEcho
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// How the XDP program is attached to its interface.
public enum XDPAttachMode: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Native where the driver has it, generic otherwise.
    case auto
    /// In the driver, before the kernel makes a socket buffer: the fast path (veth, and most 10G+ NICs' drivers).
    case native
    /// After the driver, on the socket buffer the kernel made (any interface; slower, still before the socket layer).
    case generic

    /// The mode's name, as `--xdp-mode` takes it.
    public var description: String { self.rawValue }
}

/// Where an echo server answers in XDP: the interface and how to attach (``EchoServer/Configuration/xdp``).
public struct XDPConfiguration: Sendable {
    /// The interface the program is attached to (the one the clients' datagrams arrive on).
    public var interface: String
    /// How to attach: natively where the driver allows (``XDPAttachMode/auto``), or as asked.
    public var mode: XDPAttachMode

    /// Attaches to `interface`, natively where the driver allows.
    public init(interface: String, mode: XDPAttachMode = .auto) {
        self.interface = interface
        self.mode = mode
    }
}

/// Why a datagram to the server was passed up to the socket path rather than answered in XDP.
public enum XDPPassReason: String, Sendable, CaseIterable, CustomStringConvertible {
    /// An IPv4 or IPv6 fragment: the stack reassembles it.
    case fragment
    /// IPv4 options or IPv6 extension headers.
    case options
    /// A STAMP test packet shorter than 14 bytes, or shorter than the 44-byte base (a TWAMP-Light sender's) where the
    /// frame has no room to grow to the reply's size, or with two Location TLVs or one
    /// of more than 4 sub-TLVs, a Class of Service TLV that `--reflect-tos` honours or more than 8 TLVs; or any test
    /// packet of a reflector with a key or with state.
    case stamp
    /// A UDP checksum, or an IPv4 header checksum, that does not verify: the stack drops it (and counts a UDP one
    /// in UDP InCsumErrors).
    case checksum
    /// A UDP length that disagrees with the IP length, a datagram longer than a page (4096 bytes) or past the
    /// frame's first buffer (a jumbo frame's, as a multi-buffer driver gives it); with
    /// `--no-address-checks`, a source the stack itself refuses (multicast, unspecified, loopback, limited broadcast).
    case other

    /// The reason's name, as the summary and the metrics' `reason` label say it.
    public var description: String { self.rawValue }
}

/// What the XDP program did: counters summed over the CPUs.
public struct XDPStatistics: Sendable, Equatable {
    /// The interface and how the program is attached to it (``XDPAttachMode/native`` or ``XDPAttachMode/generic``).
    public var interface: String
    /// How the program is attached.
    public var mode: XDPAttachMode
    /// Datagrams to the server that the program looked at.
    public var seen = 0
    /// Datagrams judged in XDP (answered there or dropped by a guard).
    public var judged = 0
    /// The payload bytes of ``judged``.
    public var judgedBytes = 0
    /// Echoes sent back from XDP.
    public var echoed = 0
    /// STAMP test packets reflected from XDP.
    public var reflected = 0
    /// The payload bytes of ``echoed`` and ``reflected``.
    public var answeredBytes = 0
    /// Passed up to the socket path, by reason.
    public var passed: [XDPPassReason: Int] = [:]
    /// Dropped by a guard in XDP, by reason (the socket path's reasons).
    public var drops: [DropReason: Int] = [:]
    /// Slots the rate limiter's tables (one per CPU) have filled.
    public var rateSources = 0
    /// Sources the rate limiter's tables forgot to make room for new ones.
    public var rateEvictions = 0

    /// Counters at zero for a program on `interface`, attached in `mode`.
    public init(interface: String, mode: XDPAttachMode) {
        self.interface = interface
        self.mode = mode
    }
}

/// The XDP program attached to an interface for an echo server or STAMP reflector, with its maps; detached when
/// ``detach()`` is called or the process ends (it is attached with a BPF link, whose last descriptor is this
/// object's).
///
/// The program answers in the driver what the server would answer (see `XDP/Program/udpecho.bpf.c`): echo datagrams
/// and unauthenticated STAMP test packets to the server's address and port, after the server's guards, which it
/// runs in the kernel with their own tables. Everything else goes up to the server's sockets.
final class XDPPath: Sendable {
    let interface: String
    /// How the program is attached: ``XDPAttachMode/native`` or ``XDPAttachMode/generic``.
    var mode: XDPAttachMode { self.state.withLock { $0.mode } }
    private let state: Mutex<State>
    private let cpus: Int
    private let program: XDPProgramImage

    private struct State {
        var maps: [Int32]
        var programDescriptor: Int32
        var link: Int32
        var configuration: udpecho_xdp_config
        var localKeys: Set<[UInt8]> = []
        var detached = false
        var mode = XDPAttachMode.native
        /// The counters' last values, read as the program was detached.
        var final: [Int]?
    }

    /// Loads the program for a server on `local` (its socket's address) and attaches it to the interface (unless
    /// `attach` is false: then it only runs through ``testRun(_:)``, as the fuzz target runs it).
    ///
    /// - Throws: ``EchoError/xdp(interface:reason:)`` when the interface, the kernel or the privileges refuse, with
    ///   what to do about it.
    init(
        _ configuration: XDPConfiguration,
        local: SocketAddress,
        guards: GuardConfiguration,
        stamp: StampReflectorConfiguration?,
        reflectTOS: Bool,
        attach: Bool = true
    ) throws(EchoError) {
        let interface = configuration.interface
        func failure(_ reason: String) -> EchoError { .xdp(interface: interface, reason: reason) }
        let index = if_nametoindex(interface)
        guard index != 0 else { throw failure("there is no such interface (ip link lists them)") }
        let cpus = cudpecho_possible_cpus()
        guard cpus > 0 else { throw failure("the number of CPUs cannot be read (/sys/devices/system/cpu/possible)") }
        let program = XDPProgramImage.embedded
        let config = Self.configuration(local: local, guards: guards, stamp: stamp, reflectTOS: reflectTOS)

        var maps: [Int32] = []
        func closeAll() { for fd in maps { close(fd) } }
        for definition in program.maps {
            var entries = definition.maxEntries
            switch definition.name {
            case "allow": entries = UInt32(max(1, guards.allow.count))
            case "deny": entries = UInt32(max(1, guards.deny.count))
            case "rates": entries = UInt32(fourWaySets(guards.rateLimit?.tableSize ?? 4))
            case "loops": entries = UInt32(fourWaySets(LoopDetector.tableSize))
            default: break
            }
            let fd = cudpecho_bpf_map_create(
                definition.type,
                definition.keySize,
                definition.valueSize,
                entries,
                definition.flags,
                "udpecho_\(definition.name)"
            )
            guard fd >= 0 else {
                closeAll()
                throw failure("the kernel refused the \(definition.name) map: \(Self.explain(-fd))")
            }
            maps.append(fd)
        }
        // The programs a tail call reaches first, then the entry ("xdp"), which refers to them through the
        // `programs` map.
        var loaded: [(name: String, fd: Int32)] = []
        func closeLoaded() { for program in loaded { close(program.fd) } }
        let order = program.programs.filter { $0.name != "xdp" } + program.programs.filter { $0.name == "xdp" }
        for section in order {
            var instructions = section.bytes
            for relocation in section.relocations {
                let at = relocation.instruction * 8
                guard at + 8 <= instructions.count, relocation.map < maps.count else {
                    closeLoaded()
                    closeAll()
                    throw failure("the embedded program is damaged (a relocation past its end)")
                }
                instructions[at + 1] = (instructions[at + 1] & 0x0F) | UInt8(CUDPECHO_BPF_PSEUDO_MAP_FD << 4)
                withUnsafeBytes(of: maps[relocation.map].littleEndian) { bytes in
                    for offset in 0..<4 { instructions[at + 4 + offset] = bytes[offset] }
                }
            }
            var log = [CChar](repeating: 0, count: 1 << 16)
            let name = section.name == "xdp" ? "udpecho_xdp" : "udpecho_" + section.name.dropFirst(4)
            let fd = instructions.withUnsafeBytes { bytes in
                cudpecho_bpf_load_xdp(bytes.baseAddress, UInt32(bytes.count / 8), name, &log, UInt32(log.count))
            }
            guard fd >= 0 else {
                closeLoaded()
                closeAll()
                let verifier = String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                let tail = verifier.split(separator: "\n").suffix(3).joined(separator: " / ")
                // With a log, the verifier refused it (EACCES too): a fault of this build, not of privileges.
                throw failure(
                    tail.isEmpty
                        ? "the kernel refused the program: \(Self.explain(-fd))"
                        : "the kernel's verifier refused the program \(section.name) "
                            + "(\(String(cString: strerror(-fd)))): \(tail)"
                )
            }
            loaded.append((section.name, fd))
        }
        guard let entry = loaded.first(where: { $0.name == "xdp" }) else {
            closeLoaded()
            closeAll()
            throw failure("the embedded program has no xdp section")
        }
        let programDescriptor = entry.fd
        // Tail calls: index 0 of `programs` is the answering program.
        if let table = program.map("programs"), let answer = loaded.first(where: { $0.name == "xdp/answer" }) {
            var key = UInt32(0)
            var value = answer.fd
            let result = cudpecho_bpf_map_update(maps[table], &key, &value, 0)
            guard result >= 0 else {
                closeLoaded()
                closeAll()
                throw failure("the kernel refused the tail call's table: \(Self.explain(-result))")
            }
        }
        // The prog array holds the answering program; the entry's descriptor is kept, the others closed.
        for other in loaded where other.name != "xdp" { close(other.fd) }

        self.interface = interface
        self.cpus = Int(cpus)
        self.program = program
        self.state = Mutex(State(maps: maps, programDescriptor: programDescriptor, link: -1, configuration: config))
        do throws(EchoError) {
            try self.fillTables(guards: guards, local: local)
            try self.refresh()
        } catch {
            self.detach()
            throw error
        }
        guard attach else { return }
        // Attach last, once the tables are filled: from here the program answers.
        let native = UInt32(CUDPECHO_XDP_FLAGS_DRV_MODE)
        let generic = UInt32(CUDPECHO_XDP_FLAGS_SKB_MODE)
        var link = cudpecho_bpf_link_xdp(
            programDescriptor,
            Int32(index),
            configuration.mode == .generic ? generic : native
        )
        var attached: XDPAttachMode = configuration.mode == .generic ? .generic : .native
        if link == -EOPNOTSUPP && configuration.mode == .auto {
            link = cudpecho_bpf_link_xdp(programDescriptor, Int32(index), generic)
            attached = .generic
        }
        guard link >= 0 else {
            self.detach()
            let reason =
                switch -link {
                case EBUSY, EEXIST:
                    "another XDP program is attached to it (ip link show dev \(interface) names it; "
                        + "ip link set dev \(interface) xdp off removes it, if it is not in use)"
                case EOPNOTSUPP:
                    "its driver has no native XDP (--xdp-mode generic attaches after the driver)"
                default:
                    "the kernel refused to attach the program \(attached == .native ? "natively" : "generically"): "
                        + Self.explain(-link)
                }
            throw failure(reason)
        }
        self.state.withLock {
            $0.link = link
            $0.mode = attached
        }
    }

    /// Runs the program once over `frame`, as if it had arrived on the interface (BPF_PROG_TEST_RUN): its action
    /// (`XDP_PASS` 2, `XDP_DROP` 1, `XDP_TX` 3...) and the frame as the program left it. Its tables and counters are
    /// the server's.
    func testRun(_ frame: [UInt8]) throws(EchoError) -> (action: UInt32, frame: [UInt8]) {
        let descriptor = self.state.withLock { $0.detached ? -1 : $0.programDescriptor }
        guard descriptor >= 0 else { throw .xdp(interface: self.interface, reason: "the program is detached") }
        var output = [UInt8](repeating: 0, count: frame.count + 256)
        var size = UInt32(output.count)
        var action: UInt32 = 0
        let result = frame.withUnsafeBytes { input in
            output.withUnsafeMutableBytes { out in
                cudpecho_bpf_test_run_xdp(
                    descriptor,
                    input.baseAddress,
                    UInt32(input.count),
                    out.baseAddress,
                    &size,
                    &action
                )
            }
        }
        guard result >= 0 else {
            throw .xdp(interface: self.interface, reason: "a test run failed: \(Self.explain(-result))")
        }
        return (action, Array(output.prefix(Int(min(size, UInt32(output.count))))))
    }

    /// The program's counters (``udpecho_xdp_counter``'s order), summed over the CPUs.
    func counterTotals() -> [Int] { self.state.withLock { self.readCounters($0) } }

    /// Whether the program is still attached (``detach()`` not called).
    var isAttached: Bool { self.state.withLock { !$0.detached } }

    /// Detaches the program and frees its maps (closing the link's descriptor detaches it); the counters keep their
    /// last values.
    func detach() {
        self.state.withLock { state in
            guard !state.detached else { return }
            if state.link >= 0 { state.final = self.readCounters(state) }
            state.detached = true
            if state.link >= 0 { close(state.link) }
            close(state.programDescriptor)
            for fd in state.maps { close(fd) }
        }
    }

    deinit { self.detach() }

    /// The configuration for a server on `local` with these guards.
    static func configuration(
        local: SocketAddress,
        guards: GuardConfiguration,
        stamp: StampReflectorConfiguration?,
        reflectTOS: Bool
    ) -> udpecho_xdp_config {
        var config = udpecho_xdp_config()
        // STAMP that needs a key or a session's state is the sockets' whole.
        let mode =
            stamp == nil
            ? UDPECHO_XDP_MODE_ECHO
            : stamp!.key != nil || stamp!.stateful ? UDPECHO_XDP_MODE_PASS : UDPECHO_XDP_MODE_STAMP
        config.mode = UInt8(mode.rawValue)
        config.port = UInt16(local.port ?? 0)
        var flags: UInt32 = 0
        let unmapped = local.unmappingIPv4
        switch unmapped {
        case .v4:
            flags |= UInt32(UDPECHO_XDP_IPV4.rawValue)
        case .v6:
            flags |= UInt32(UDPECHO_XDP_IPV6.rawValue)
            // A dual-stack wildcard socket serves IPv4 too.
            if local.isUnspecified { flags |= UInt32(UDPECHO_XDP_IPV4.rawValue) }
        default:
            break
        }
        if !local.isUnspecified, let key = unmapped.withRawAddress({ raw, _ in IPKey(raw) }) {
            flags |= UInt32(UDPECHO_XDP_BOUND.rawValue)
            withUnsafeMutableBytes(of: &config.address) { $0.copyBytes(from: key.mappedBytes) }
        }
        if guards.addressChecks { flags |= UInt32(UDPECHO_XDP_ADDRESS_CHECKS.rawValue) }
        if !guards.allow.isEmpty { flags |= UInt32(UDPECHO_XDP_ALLOW_LIST.rawValue) }
        if !guards.deny.isEmpty { flags |= UInt32(UDPECHO_XDP_DENY_LIST.rawValue) }
        if guards.limitLoopback { flags |= UInt32(UDPECHO_XDP_LIMIT_LOOPBACK.rawValue) }
        if reflectTOS && stamp == nil { flags |= UInt32(UDPECHO_XDP_KEEP_TOS.rawValue) }
        if stamp?.timestampFormat == .ptp { flags |= UInt32(UDPECHO_XDP_PTP.rawValue) }
        if stamp?.honourClassOfService == true { flags |= UInt32(UDPECHO_XDP_HONOUR_COS.rawValue) }
        if let maximum = guards.maximumSize {
            flags |= UInt32(UDPECHO_XDP_MAXIMUM_SIZE.rawValue)
            config.maximum_size = UInt32(clamping: max(0, maximum))
        }
        if let limit = guards.loopLimit {
            config.loop_limit_set = 1
            config.loop_limit = UInt32(clamping: max(0, limit))
        }
        // Token buckets count picotokens in 64 bits: bursts up to 9e6 replies and rates up to 1e12 a second keep
        // `tokens + elapsed * rate` below 2^64 (the program adds before it clamps to the burst).
        let picotokens = 1e12
        let maximumBurst = 9e6
        func bucket(rate: Double, burst: Double) -> (perNanosecond: UInt64, burst: UInt64, fill: UInt64) {
            let perNanosecond = UInt64(max(1, min(1e15, rate * 1000)))
            let picoBurst = UInt64(min(maximumBurst, max(1, burst)) * picotokens)
            return (perNanosecond, picoBurst, picoBurst / perNanosecond + 1)
        }
        if let rate = guards.rateLimit {
            flags |= UInt32(UDPECHO_XDP_RATE_LIMIT.rawValue)
            config.rate_mask4 = Self.prefixMask(bits: 96 + min(32, max(0, rate.ipv4PrefixLength)))
            config.rate_mask6 = Self.prefixMask(bits: min(128, max(0, rate.ipv6PrefixLength)))
            (config.rate_per_ns, config.burst, config.rate_fill) = bucket(rate: rate.perSecond, burst: rate.burst)
        }
        if let global = guards.globalRate {
            flags |= UInt32(UDPECHO_XDP_GLOBAL_BUDGET.rawValue)
            // Each CPU's share, as each serving thread has its share on the socket path.
            let online = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
            let share = global / Double(online)
            (config.global_rate_per_ns, config.global_burst, config.global_fill) = bucket(rate: share, burst: share)
        }
        // The coarse clock moves a tick at a time (1-10 ms): a bucket that holds less than many ticks' refill would
        // lose tokens to its cap between ticks, and replies with them. STAMP's T2 is never coarse.
        let coarseEnough = 0.05
        let buckets = [
            guards.rateLimit.map { ($0.perSecond, $0.burst) },
            guards.globalRate.map { rate in
                let share = rate / Double(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
                return (share, share)
            },
        ].compactMap { $0 }
        if stamp == nil && buckets.allSatisfy({ rate, burst in max(1, burst) >= rate * coarseEnough }) {
            flags |= UInt32(UDPECHO_XDP_COARSE_CLOCK.rawValue)
        }
        config.flags = flags
        config.loop_set_mask = UInt32(fourWaySets(LoopDetector.tableSize) - 1)
        config.rate_set_mask = UInt32(fourWaySets(guards.rateLimit?.tableSize ?? 4) - 1)
        var generator = SystemRandomNumberGenerator()
        config.hash_key = (generator.next(), generator.next())
        return config
    }

    /// The mask of a prefix of `bits` bits of a 16-byte address, as the address's two 64-bit words are in memory.
    static func prefixMask(bits: Int) -> (UInt64, UInt64) {
        var bytes = [UInt8](repeating: 0, count: 16)
        for index in 0..<16 {
            let covered = min(8, max(0, bits - index * 8))
            bytes[index] = covered == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - covered))
        }
        return bytes.withUnsafeBytes {
            ($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        }
    }

    /// Fills the tables that do not change while the server runs: blocked source ports and the prefix lists.
    private func fillTables(guards: GuardConfiguration, local: SocketAddress) throws(EchoError) {
        let localPort = local.port ?? 0
        var words = [UInt64](repeating: 0, count: 1024)
        for port in 0..<65536
        where port < guards.minimumSourcePort || guards.deniedSourcePorts.contains(port)
            || (guards.denyOwnPort && port == localPort && port != 0)
        {
            words[port >> 6] |= 1 << UInt64(port & 63)
        }
        for (index, word) in words.enumerated() where word != 0 {
            try self.update("ports", key: UInt32(index), value: word)
        }
        for (name, list) in [("allow", guards.allow), ("deny", guards.deny)] {
            for prefix in list {
                var key = udpecho_xdp_prefix()
                key.length = UInt32(prefix.bits)
                withUnsafeMutableBytes(of: &key.address) { $0.copyBytes(from: prefix.network.mappedBytes) }
                try self.update(name, key: key, value: UInt32(1))
            }
        }
    }

    /// Writes what changes while the server runs: the clock's offset and error estimate (STAMP), the host's
    /// addresses and the ephemeral port range. The server calls it every second.
    func refresh() throws(EchoError) {
        let clock = HostClock.current()
        let format: StampTimestampFormat = self.state.withLock {
            $0.configuration.flags & UInt32(UDPECHO_XDP_PTP.rawValue) != 0 ? .ptp : .ntp
        }
        var realtime = timespec()
        var monotonic = timespec()
        clock_gettime(CLOCK_MONOTONIC, &monotonic)
        clock_gettime(CLOCK_REALTIME, &realtime)
        let offset =
            (Int64(realtime.tv_sec) - Int64(monotonic.tv_sec)) * 1_000_000_000
            + Int64(realtime.tv_nsec) - Int64(monotonic.tv_nsec)
        let ports = EphemeralPorts.current()
        let interfaces = InterfaceAddresses.current()
        var current: [[UInt8]: UInt32] = [:]
        for address in interfaces.addresses {
            current[address.mappedBytes, default: 0] |= UInt32(UDPECHO_XDP_LOCAL_ADDRESS.rawValue)
        }
        for address in interfaces.broadcasts {
            current[address.mappedBytes, default: 0] |= UInt32(UDPECHO_XDP_LOCAL_BROADCAST.rawValue)
        }
        let (config, stale) = self.state.withLock { state -> (udpecho_xdp_config, Set<[UInt8]>) in
            state.configuration.realtime_offset = offset
            let broadcasts = UInt32(UDPECHO_XDP_BROADCASTS.rawValue)
            state.configuration.flags =
                (state.configuration.flags & ~broadcasts) | (interfaces.broadcasts.isEmpty ? 0 : broadcasts)
            let synchronized = UInt32(UDPECHO_XDP_SYNCHRONIZED.rawValue)
            state.configuration.flags =
                (state.configuration.flags & ~synchronized) | (clock.synchronized ? synchronized : 0)
            state.configuration.tai_offset = Int32(clamping: clock.taiOffset)
            state.configuration.error_estimate = clock.errorEstimate(format).raw.bigEndian
            state.configuration.ephemeral_low = UInt32(ports.lowerBound)
            state.configuration.ephemeral_high = UInt32(ports.upperBound)
            // The host's own addresses in place too (a few: the program compares them; more: it looks in the map).
            let own = current.filter { $0.value & UInt32(UDPECHO_XDP_LOCAL_ADDRESS.rawValue) != 0 }.keys.sorted {
                $0.lexicographicallyPrecedes($1)
            }
            let slots = Int(UDPECHO_XDP_LOCAL_SLOTS)
            state.configuration.local_count = UInt32(min(own.count, slots + 1))
            withUnsafeMutableBytes(of: &state.configuration.local_addresses) { slotBytes in
                slotBytes.initializeMemory(as: UInt8.self, repeating: 0)
                for (index, address) in own.prefix(slots).enumerated() {
                    UnsafeMutableRawBufferPointer(rebasing: slotBytes[(index * 16)..<(index * 16 + 16)])
                        .copyBytes(from: address)
                }
            }
            let stale = state.localKeys.subtracting(current.keys)
            state.localKeys = Set(current.keys.prefix(1024))
            return (state.configuration, stale)
        }
        try self.update("config", key: UInt32(0), value: config)
        for (key, flags) in current.prefix(1024) {
            var address = (UInt64(0), UInt64(0))
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: key) }
            try self.update("local", key: address, value: flags)
        }
        for key in stale {
            var address = (UInt64(0), UInt64(0))
            withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: key) }
            self.state.withLock { state in
                guard !state.detached, let map = self.program.map("local") else { return }
                _ = cudpecho_bpf_map_delete(state.maps[map], &address)
            }
        }
    }

    /// Writes one entry of a map: `Key` and `Value` are plain C layouts (integers, tuples, the shared header's
    /// structs), their bytes what the map holds.
    private func update<Key: BitwiseCopyable, Value: BitwiseCopyable>(
        _ name: String,
        key: Key,
        value: Value
    ) throws(EchoError) {
        let result = self.state.withLock { state -> Int32 in
            guard !state.detached, let map = self.program.map(name) else { return 0 }
            return withUnsafeBytes(of: key) { key in
                withUnsafeBytes(of: value) { value in
                    cudpecho_bpf_map_update(state.maps[map], key.baseAddress, value.baseAddress, 0)
                }
            }
        }
        guard result >= 0 else {
            throw .xdp(interface: self.interface, reason: "writing the \(name) map failed: \(Self.explain(-result))")
        }
    }

    /// The counters now, summed over the CPUs.
    var statistics: XDPStatistics {
        var statistics = XDPStatistics(interface: self.interface, mode: self.mode)
        let totals = self.state.withLock { state in
            state.detached
                ? state.final ?? [Int](repeating: 0, count: Int(UDPECHO_XDP_COUNTERS.rawValue))
                : self.readCounters(state)
        }
        func value(_ counter: udpecho_xdp_counter) -> Int { totals[Int(counter.rawValue)] }
        statistics.seen = value(UDPECHO_XDP_SEEN)
        statistics.judgedBytes = value(UDPECHO_XDP_JUDGED_BYTES)
        statistics.echoed = value(UDPECHO_XDP_ECHOED)
        statistics.reflected = value(UDPECHO_XDP_REFLECTED)
        statistics.answeredBytes = value(UDPECHO_XDP_ECHOED_BYTES)
        statistics.rateSources = value(UDPECHO_XDP_RATE_NEW_SOURCE)
        statistics.rateEvictions = value(UDPECHO_XDP_RATE_EVICTED)
        let passes: [(XDPPassReason, udpecho_xdp_counter)] = [
            (.fragment, UDPECHO_XDP_PASS_FRAGMENT), (.options, UDPECHO_XDP_PASS_OPTIONS),
            (.stamp, UDPECHO_XDP_PASS_STAMP), (.checksum, UDPECHO_XDP_PASS_CHECKSUM), (.other, UDPECHO_XDP_PASS_OTHER),
        ]
        for (reason, counter) in passes where value(counter) > 0 { statistics.passed[reason] = value(counter) }
        let drops: [(DropReason, udpecho_xdp_counter)] = [
            (.oversize, UDPECHO_XDP_DROP_OVERSIZE), (.sourcePort, UDPECHO_XDP_DROP_SOURCE_PORT),
            (.sourceAddress, UDPECHO_XDP_DROP_SOURCE_ADDRESS), (.ownEndpoint, UDPECHO_XDP_DROP_OWN_ENDPOINT),
            (.denied, UDPECHO_XDP_DROP_DENIED), (.loop, UDPECHO_XDP_DROP_LOOP),
            (.rateLimited, UDPECHO_XDP_DROP_RATE_LIMITED), (.overBudget, UDPECHO_XDP_DROP_OVER_BUDGET),
        ]
        for (reason, counter) in drops where value(counter) > 0 { statistics.drops[reason] = value(counter) }
        statistics.judged = statistics.echoed + statistics.reflected + statistics.drops.values.reduce(0, +)
        return statistics
    }

    /// The counters from the map, summed over the CPUs (the map's one entry holds them all, per CPU).
    private func readCounters(_ state: State) -> [Int] {
        let count = Int(UDPECHO_XDP_COUNTERS.rawValue)
        var totals = [Int](repeating: 0, count: count)
        guard let map = self.program.map("counters") else { return totals }
        var values = [UInt64](repeating: 0, count: self.cpus * count)
        var key = UInt32(0)
        guard cudpecho_bpf_map_lookup(state.maps[map], &key, &values) == 0 else { return totals }
        for cpu in 0..<self.cpus {
            for index in 0..<count { totals[index] &+= Int(truncatingIfNeeded: values[cpu * count + index]) }
        }
        return totals
    }

    /// An errno in words, with what to grant where it is a privilege.
    static func explain(_ code: Int32) -> String {
        let text = String(cString: strerror(code))
        switch code {
        case EPERM, EACCES:
            return "\(text): loading and attaching an XDP program needs CAP_BPF and CAP_NET_ADMIN (run as root, or "
                + "with AmbientCapabilities=CAP_BPF CAP_NET_ADMIN in the systemd unit)"
        default:
            return text
        }
    }
}

extension IPKey {
    /// The address's 16 bytes in network order, IPv4 mapped into IPv6 (the XDP maps' form).
    var mappedBytes: [UInt8] {
        withUnsafeBytes(of: (self.high.bigEndian, self.low.bigEndian)) { Array($0) }
    }
}
