import NIOCore
import NIOHTTP1

extension FuzzHarness {
    /// An exporter configuration file, whole: the YAML reader and the configuration's checks.
    static func exporterConfiguration(_ data: UnsafeRawBufferPointer) {
        let bytes = Array(data)
        let lines = bytes.reduce(1) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        switch YAMLReader.read(bytes) {
        case .success(let node):
            precondition(node.line >= 1 && node.line <= lines, "a node on line \(node.line) of \(lines)")
        case .failure(let error):
            precondition(error.line >= 1 && error.line <= lines, "an error on line \(error.line) of \(lines)")
        }
        let key = IPPMKeyFile(secrets: ["alice": Array("secret".utf8)])
        switch ExporterConfiguration.parse(bytes, readKey: { _ in key }) {
        case .success(let configuration):
            precondition(configuration.modules.count <= bytes.count, "\(configuration.modules.count) modules")
            for module in configuration.modules.values {
                precondition((1...ExporterConfiguration.maximumCount).contains(module.count), "count \(module.count)")
                precondition(module.interval >= .milliseconds(1) && module.timeout >= .milliseconds(1))
            }
            for target in configuration.targets {
                precondition(configuration.modules[target.module] != nil, "a target of an unknown module")
            }
        case .failure(let error):
            precondition(error.line >= 0 && error.line <= lines, "an error on line \(error.line) of \(lines)")
            precondition(error.description.utf8.count < 4096, "a \(error.description.utf8.count)-byte error")
        }
    }

    /// A scrape's request line and headers at the exporter, checked and admitted as `/probe` admits them (nothing is
    /// sent): a probe is admitted only of a configured module, to an allowed target, within the limits, and its slot
    /// comes back.
    static func exporterRequest(_ data: UnsafeRawBufferPointer) {
        var configuration = ExporterConfiguration()
        var echo = ProbeModule()
        echo.count = 3
        configuration.modules = [
            "echo": echo,
            "stamp": {
                var m = ProbeModule()
                m.probeProtocol = .stamp
                return m
            }(),
        ]
        configuration.allow.prefixes = [
            try! IPPrefix(parsing: "192.0.2.0/24"), try! IPPrefix(parsing: "2001:db8::/32"),
        ]
        configuration.allow.names = ["router1.example.net"]
        let exporter = ProbeExporter(configuration: configuration)
        let text = String(decoding: data, as: UTF8.self)
        let lines = text.split(separator: "\n", maxSplits: 16, omittingEmptySubsequences: false)
        var headers = HTTPHeaders()
        for line in lines.dropFirst() {
            let pair = line.split(separator: ":", maxSplits: 1)
            // Names as SwiftNIO's decoder passes them on: ASCII (its HTTPHeaders take nothing else).
            if pair.count == 2, pair[0].utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
                headers.add(name: String(pair[0]), value: String(pair[1]))
            }
        }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: String(lines.first ?? ""), headers: headers)
        let request = EndpointRequest(head: head, remote: nil)
        let started = ContinuousClock.now
        switch exporter.admit(request, started: started) {
        case .success(let probe):
            precondition(configuration.modules[probe.moduleName] != nil, "module \(probe.moduleName)")
            let host = probe.endpoint.host ?? ""
            if let literal = try? SocketAddress(ipAddress: host, port: probe.endpoint.port) {
                precondition(configuration.allow.allows(literal), "\(host) admitted")
            } else {
                precondition(configuration.allow.allows(name: host), "\(host) admitted")
            }
            precondition(probe.deadline > started && probe.deadline <= started + .seconds(3600), "deadline")
            exporter.release(probe, success: false)
            precondition(exporter.runningProbes == 0, "a slot kept")
        case .failure(let refusal):
            precondition([400, 403, 503].contains(refusal.response.status), "status \(refusal.response.status)")
            precondition(ProbeExporter.refusalReasons.contains(refusal.reason), "reason \(refusal.reason)")
            // One line, whatever the URL held: it cannot add a sample.
            let body = String(buffer: refusal.response.body)
            precondition(body.utf8.count < 1024 && body.dropLast().firstIndex(of: "\n") == nil, "answer \(body)")
        }
    }
}
