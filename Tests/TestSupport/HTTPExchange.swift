import Foundation
import NIOCore

/// One HTTP/1.1 exchange over a plain TCP socket of the test's own (`Connection: close`): the status, the headers
/// (names in lower case) and the body.
public struct HTTPExchange: Sendable {
    public var status: Int
    public var headers: [String: String]
    public var body: String

    /// Why an exchange did not complete.
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Sends `method target` to `address` and reads the answer until the server closes the connection.
    public static func send(
        _ method: String,
        _ target: String,
        to address: SocketAddress,
        headers: [String: String] = [:],
        timeoutMilliseconds: Int32 = 20_000
    ) async throws -> HTTPExchange {
        let client = try TestTCPClient(connectTo: address)
        var request = "\(method) \(target) HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        for (name, value) in headers { request += "\(name): \(value)\r\n" }
        if method == "POST" { request += "Content-Length: 0\r\n" }
        request += "\r\n"
        guard client.send(Array(request.utf8)) else { throw Failure(description: "the request was not sent") }
        guard let bytes = await client.receiveUntilClosed(timeoutMilliseconds: timeoutMilliseconds) else {
            throw Failure(description: "no complete answer to \(method) \(target)")
        }
        let text = String(decoding: bytes, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        let head = parts[0].components(separatedBy: "\r\n")
        let words = head[0].split(separator: " ")
        let status = words.count > 1 ? Int(words[1]) ?? 0 : 0
        var fields: [String: String] = [:]
        for line in head.dropFirst() {
            let pair = line.split(separator: ":", maxSplits: 1)
            if pair.count == 2 { fields[pair[0].lowercased()] = pair[1].trimmingCharacters(in: .whitespaces) }
        }
        return HTTPExchange(status: status, headers: fields, body: parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// The value of the unlabelled sample `name`, or of the one with exactly `labels`.
    public func value(_ name: String, _ labels: String = "") -> Double? {
        let key = labels.isEmpty ? name + " " : "\(name){\(labels)} "
        for line in self.body.split(separator: "\n") where line.hasPrefix(key) {
            return Double(line.dropFirst(key.count))
        }
        return nil
    }
}
