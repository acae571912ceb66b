import Atomics
import NIOCore
import NIOPosix
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The prober side of a mesh agent as a `Service`: keeps the target set of a ``MeshProber`` in step with the peers
/// (`--peer` options, a `--peers` file re-read when it changes or on ``reload()``, names re-resolved every
/// `resolveInterval`) and runs the prober until shutdown.
public final class MeshAgent: Service, Sendable {
    /// Where the peers come from.
    public struct Configuration: Sendable {
        /// Peers given one by one.
        public var peers: [MeshPeer]
        /// A file of peers, one a line (``MeshPeerList/parse(_:defaultPort:)``), re-read when it changes.
        public var peersFile: String?
        /// The port of a peer written without one.
        public var defaultPort: Int
        /// How often names are resolved again (a Kubernetes headless Service answers one address per pod).
        public var resolveInterval: Duration

        /// Peers from `peers` and `peersFile`, 1337 for a peer without a port, names resolved again every 30 s.
        public init(
            peers: [MeshPeer] = [],
            peersFile: String? = nil,
            defaultPort: Int = 1337,
            resolveInterval: Duration = .seconds(30)
        ) {
            self.peers = peers
            self.peersFile = peersFile
            self.defaultPort = defaultPort
            self.resolveInterval = resolveInterval
        }
    }

    /// What happened while keeping the targets: for the agent's log.
    public enum Event: Sendable {
        /// The targets changed: how many there are, and how many came and went.
        case targets(count: Int, added: Int, removed: Int)
        /// The peers file could not be read or has bad lines; the previous list is kept.
        case peersFileRejected(String)
        /// A name did not resolve; its previous addresses are kept.
        case nameNotResolved(String)
    }

    /// Where the peers come from.
    public let configuration: Configuration
    /// The prober that sends the probes and counts what comes back.
    public let prober: MeshProber
    private let reloadRequested = ManagedAtomic(false)
    private let onEvent: @Sendable (Event) -> Void
    private let state = Mutex(State())

    private struct State {
        var filePeers: [MeshPeer] = []
        var fileStamp: (Int, Int) = (-1, -1)
        var resolved: [MeshPeer: [SocketAddress]] = [:]
        var targets: Set<MeshTarget> = []
    }

    /// An agent for `prober`; `onEvent` hears of changes and problems.
    public init(
        _ configuration: Configuration,
        prober: MeshProber,
        onEvent: @escaping @Sendable (Event) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.prober = prober
        self.onEvent = onEvent
    }

    /// Re-reads the peers file and resolves every name again, soon (SIGHUP).
    public func reload() { self.reloadRequested.store(true, ordering: .relaxed) }

    /// Reads the peers and sets the prober's targets once; the first call of ``run()`` does it too. Returns the
    /// number of targets.
    @discardableResult
    public func refresh(resolveNames: Bool = true) async -> Int {
        let filePeers = self.readPeersFile()
        let peers = Self.unique(self.configuration.peers + filePeers)
        var resolved = self.state.withLock { $0.resolved }
        for peer in peers where resolveNames || resolved[peer] == nil {
            do {
                let addresses = try await NIOThreadPool.singleton.runIfActive {
                    try NameResolver.resolve(peer.endpoint)
                }
                var seen = Set<String>()
                resolved[peer] = addresses.filter { seen.insert($0.hostPortDescription).inserted }
            } catch {
                self.onEvent(.nameNotResolved("\(peer): \(error)"))
            }
        }
        let wanted = Set(peers)
        resolved = resolved.filter { wanted.contains($0.key) }
        let targets = Set(peers.flatMap { peer in (resolved[peer] ?? []).map { MeshTarget(peer: peer, address: $0) } })
        let (added, removed) = self.state.withLock { state -> (Int, Int) in
            defer {
                state.resolved = resolved
                state.targets = targets
            }
            return (targets.subtracting(state.targets).count, state.targets.subtracting(targets).count)
        }
        self.prober.setTargets(Array(targets))
        if added > 0 || removed > 0 { self.onEvent(.targets(count: targets.count, added: added, removed: removed)) }
        return targets.count
    }

    /// Keeps the targets current and probes until graceful shutdown or cancellation.
    public func run() async throws {
        await self.refresh()
        let failure: EchoError? = await cancelWhenGracefulShutdown {
            await withTaskGroup(of: EchoError?.self) { group in
                group.addTask {
                    do throws(EchoError) {
                        try await self.prober.run()
                        return nil
                    } catch {
                        return error  // no probing thread: the agent stops with the error
                    }
                }
                group.addTask {
                    var lastResolve = ContinuousClock.now
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(1))
                        let reload = self.reloadRequested.exchange(false, ordering: .relaxed)
                        let due = ContinuousClock.now - lastResolve >= self.configuration.resolveInterval
                        if reload || due {
                            lastResolve = ContinuousClock.now
                            await self.refresh(resolveNames: true)
                        } else if self.peersFileChanged() {
                            await self.refresh(resolveNames: false)
                        }
                    }
                    return nil
                }
                let first = await group.next() ?? nil
                group.cancelAll()
                return first
            }
        }
        if let failure { throw failure }
    }

    private static func unique(_ peers: [MeshPeer]) -> [MeshPeer] {
        var seen = Set<MeshPeer>()
        return peers.filter { seen.insert($0).inserted }
    }

    private func stamp(_ path: String) -> (Int, Int)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (Int(info.st_mtim.tv_sec) * 1_000_000_000 + Int(info.st_mtim.tv_nsec), Int(info.st_size))
    }

    private func peersFileChanged() -> Bool {
        guard let path = self.configuration.peersFile, let stamp = self.stamp(path) else { return false }
        return self.state.withLock { $0.fileStamp != stamp }
    }

    /// The peers of the file, or the previous ones when it cannot be read, is not a regular file, is too large or
    /// has a bad line (said once per change).
    private func readPeersFile() -> [MeshPeer] {
        guard let path = self.configuration.peersFile else { return [] }
        let stamp = self.stamp(path) ?? (-1, -1)
        let peers: Result<[MeshPeer], MeshPeerList.ListError>
        do {
            let bytes = try OperatorFile.read(path, limit: MeshPeerList.maximumFileSize)
            peers = MeshPeerList.parse(bytes: bytes, defaultPort: self.configuration.defaultPort)
        } catch {
            return self.rejected(stamp, "\(error); the previous list is kept")
        }
        switch peers {
        case .success(let peers):
            self.state.withLock {
                $0.filePeers = peers
                $0.fileStamp = stamp
            }
            return peers
        case .failure(let error):
            return self.rejected(stamp, "\(path): \(error); the previous list is kept")
        }
    }

    /// The previous list, after saying why the file's version `stamp` was refused (once per version).
    private func rejected(_ stamp: (Int, Int), _ reason: String) -> [MeshPeer] {
        let changed = self.state.withLock { state -> Bool in
            defer { state.fileStamp = stamp }
            return state.fileStamp != stamp
        }
        if changed { self.onEvent(.peersFileRejected(reason)) }
        return self.state.withLock { $0.filePeers }
    }
}
