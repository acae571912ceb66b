import ArgumentParser
import UDPEcho

/// Parses `HOST:PORT` for an `@Option(transform:)`, with the library's explanation of what is wrong.
func parseAddress(_ text: String) throws -> HostAndPort {
    do {
        return try HostAndPort(parsing: text)
    } catch {
        throw ValidationError(error.description)
    }
}

/// Parses a duration such as `500ms`, `2s` or `1m` for an `@Option(transform:)`.
func parseDuration(_ text: String) throws -> Duration {
    do {
        return try Duration(parsing: text)
    } catch {
        throw ValidationError(error.description)
    }
}

/// The address given by `--address`, or by the article's `--host`/`--port`, which cannot be mixed with it.
func chooseAddress(address: HostAndPort?, host: String?, port: Int?, defaultHost: String?) throws -> HostAndPort? {
    if let address {
        guard host == nil && port == nil else {
            throw ValidationError("give either --address HOST:PORT or --host/--port, not both")
        }
        return address
    }
    guard host != nil || port != nil else { return nil }
    if let port, !(0...65535).contains(port) {
        throw ValidationError("--port \(port) is out of range; UDP ports go from 0 to 65535")
    }
    let host = host.map { $0.hasPrefix("[") && $0.hasSuffix("]") ? String($0.dropFirst().dropLast()) : $0 }
    return HostAndPort(host: host ?? defaultHost, port: port ?? 1337)
}
