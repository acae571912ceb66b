/// The shared secrets of OWAMP and TWAMP's authenticated and encrypted modes, by key identity, in the file format of
/// perfSONAR's `pfstore` (`twamp-server.pfs`, `owamp-server.pfs`): one `IDENTITY HEXSECRET` per line, `#` comments
/// and blank lines ignored.
///
/// ```
/// # made by: pfstore -f twamp-server.pfs alice
/// alice 6d7973656372657470617373
/// ```
public struct IPPMKeyFile: Sendable, Equatable {
    /// The secrets by identity (an identity is at most 80 bytes: the Set-Up-Response's KeyID field).
    public var secrets: [String: [UInt8]]

    /// The most a key file may hold.
    public static let maximumFileSize = 1 << 20

    public init(secrets: [String: [UInt8]]) { self.secrets = secrets }

    /// The key file at `path`: a regular file of at most 1 MiB.
    public init(contentsOfFile path: String) throws(EchoError) {
        let bytes: [UInt8]
        do {
            bytes = try OperatorFile.read(path, limit: Self.maximumFileSize)
        } catch {
            throw .invalidConfiguration("the key file \(error)")
        }
        do {
            self = try Self(parsing: bytes)
        } catch {
            throw .invalidConfiguration("the key file \(path): \(error)")
        }
    }

    /// Parses a key file's bytes; every line must be a comment, blank, or an identity and its secret in hex.
    public init(parsing bytes: [UInt8]) throws(ControlProtocolError) {
        var secrets: [String: [UInt8]] = [:]
        var number = 0
        for line in bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            number += 1
            let words = line.split(whereSeparator: { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D })
            guard let first = words.first, first.first != UInt8(ascii: "#") else { continue }
            guard words.count == 2 else {
                throw ControlProtocolError(
                    "line \(number): expected an identity and a hex secret, found \(words.count) words"
                )
            }
            guard let identity = String(validating: first, as: UTF8.self), first.count <= 80 else {
                throw ControlProtocolError("line \(number): the identity is not UTF-8 of at most 80 bytes")
            }
            guard let secret = Self.hex(words[1]), !secret.isEmpty else {
                throw ControlProtocolError(
                    "line \(number): the secret of \(identity) is not an even number of hex digits"
                )
            }
            guard secrets[identity] == nil else {
                throw ControlProtocolError("line \(number): \(identity) is in the file twice")
            }
            secrets[identity] = secret
        }
        self.secrets = secrets
    }

    /// The secret of `identity` (the KeyID of a Set-Up-Response, without its zero padding).
    func secret(for identity: [UInt8]) -> [UInt8]? {
        guard let name = String(validating: identity, as: UTF8.self) else { return nil }
        return self.secrets[name]
    }

    private static func hex(_ digits: some Collection<UInt8>) -> [UInt8]? {
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var high: UInt8?
        for digit in digits {
            let value: UInt8
            switch digit {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = digit - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = digit - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = digit - UInt8(ascii: "A") + 10
            default: return nil
            }
            if let first = high {
                bytes.append(first << 4 | value)
                high = nil
            } else {
                high = value
            }
        }
        return bytes
    }
}
