import NIOCore
import Testing

@testable import UDPEcho

@Suite struct HostAndPortTests {
    @Test(arguments: [
        ("127.0.0.1:1337", "127.0.0.1", 1337),
        ("[::1]:7", "::1", 7),
        ("localhost:0", "localhost", 0),
        ("example.org:65535", "example.org", 65535),
        ("[fe80::1%eth0]:9", "fe80::1%eth0", 9),
    ])
    func parsesHostAndPort(text: String, host: String, port: Int) throws {
        let parsed = try HostAndPort(parsing: text)
        #expect(parsed.host == host)
        #expect(parsed.port == port)
        #expect(parsed.description == text)
    }

    @Test func emptyHostMeansEveryAddress() throws {
        let parsed = try HostAndPort(parsing: ":1337")
        #expect(parsed.host == nil)
        #expect(parsed.port == 1337)
    }

    @Test(arguments: [
        ("", AddressError.empty),
        ("127.0.0.1", .missingPort("127.0.0.1")),
        ("localhost:", .missingPort("localhost:")),
        ("host:http", .badPort("host:http", "http")),
        ("host:-1", .badPort("host:-1", "-1")),
        ("host:65536", .portOutOfRange("host:65536", 65536)),
        ("::1:1337", .unbracketedIPv6("::1:1337")),
        ("[::1:1337", .unclosedBracket("[::1:1337")),
        ("[::1]", .missingPort("[::1]")),
        ("[]:1", .emptyHost("[]:1")),
    ])
    func rejectsBadAddresses(text: String, expected: AddressError) {
        #expect(throws: expected) { try HostAndPort(parsing: text) }
    }

    @Test func errorsSayHowToWriteTheAddress() {
        #expect(AddressError.missingPort("localhost").description.contains("localhost:1337"))
        #expect(AddressError.unbracketedIPv6("::1:7").description.contains("[::1]:1337"))
        #expect(AddressError.portOutOfRange("h:70000", 70000).description.contains("0 to 65535"))
    }

    /// The suggestion completes what was written, without doubling brackets or colons.
    @Test(arguments: [
        ("[::1]", "[::1]:1337"), ("host:", "host:1337"), ("[::1]:", "[::1]:1337"), ("localhost", "localhost:1337"),
    ])
    func suggestsTheAddressAsMeant(text: String, suggestion: String) throws {
        let error = #expect(throws: AddressError.self) { try HostAndPort(parsing: text) }
        let description = try #require(error?.description)
        #expect(description.contains("for example \(suggestion)"), "\(description)")
        #expect(!description.contains("[[") && !description.contains(":]:"), "\(description)")
    }
}

@Suite struct DurationTests {
    @Test(arguments: [
        ("500ms", Duration.milliseconds(500)),
        ("2s", .seconds(2)),
        ("1m", .seconds(60)),
        ("1m30s", .seconds(90)),
        ("1.5s", .milliseconds(1500)),
        ("250us", .microseconds(250)),
        ("250µs", .microseconds(250)),
        ("10ns", .nanoseconds(10)),
        ("1h", .seconds(3600)),
        ("0", .zero),
        (".5s", .milliseconds(500)),
        ("1.s", .seconds(1)),
        ("+5s", .seconds(5)),
        ("1.000000001s", .nanoseconds(1_000_000_001)),
        ("1h1m1s1ms1us1ns", .nanoseconds(3_661_001_001_001)),
        ("2562047h47m16.854775807s", .nanoseconds(Int64.max)),
        ("9223372036854775807ns", .nanoseconds(Int64.max)),
    ])
    func parsesGoDurations(text: String, expected: Duration) throws {
        #expect(try Duration(parsing: text) == expected)
    }

    @Test(arguments: ["", "15", "s", "5 minutes", "-1s", "1x", "1.2.3s", ".s", "00", "1s 2"])
    func rejectsBadDurations(text: String) {
        #expect(throws: DurationParseError.self) { try Duration(parsing: text) }
    }

    /// Go's limit, 2^63 - 1 nanoseconds (about 292 years), and not a nanosecond more.
    @Test(arguments: ["2562047h47m16.854775808s", "2562048h", "9223372036854775808ns", "99999999999999999999ns"])
    func rejectsDurationsLongerThanGoAllows(text: String) {
        let error = #expect(throws: DurationParseError.self) { try Duration(parsing: text) }
        #expect(error?.description.contains("2562047h47m16.854775807s") == true, "\(String(describing: error))")
    }

    @Test func missingUnitIsExplained() {
        let error = #expect(throws: DurationParseError.self) { try Duration(parsing: "15") }
        #expect(error?.description.contains("has no unit") == true)
        #expect(error?.description.contains("500ms") == true)
    }

    @Test(arguments: [
        (Duration.seconds(15), "15s"), (.milliseconds(500), "500ms"), (.seconds(90), "1m30s"),
        (.seconds(120), "2m"), (.microseconds(1500), "1.5ms"), (.nanoseconds(12), "12ns"), (.seconds(7200), "2h"),
    ])
    func printsShortDurations(duration: Duration, text: String) throws {
        #expect(duration.shortDescription == text)
        #expect(try Duration(parsing: text) == duration)
    }
}

@Suite struct AddressFormattingTests {
    @Test func ipv4IsPrintedAsGoDoes() throws {
        #expect(try SocketAddress(ipAddress: "127.0.0.1", port: 54321).hostPortDescription == "127.0.0.1:54321")
    }

    @Test func ipv6IsBracketed() throws {
        #expect(try SocketAddress(ipAddress: "::1", port: 54321).hostPortDescription == "[::1]:54321")
        #expect(try SocketAddress(ipAddress: "::", port: 1337).hostPortDescription == "[::]:1337")
    }

    @Test func mappedIPv4IsPrintedAsPlainIPv4() throws {
        let mapped = try SocketAddress(ipAddress: "::ffff:10.1.2.3", port: 7)
        #expect(mapped.hostPortDescription == "10.1.2.3:7")
        #expect(mapped.unmappingIPv4 == (try SocketAddress(ipAddress: "10.1.2.3", port: 7)))
        #expect(mapped.maximumDatagramPayload == 65507)
    }

    @Test func zoneIsPrintedWithTheInterfaceName() throws {
        guard case .v6(let v6) = try SocketAddress(ipAddress: "fe80::1", port: 9) else {
            Issue.record()
            return
        }
        var raw = v6.address
        raw.sin6_scope_id = 1  // the loopback interface is index 1 on Linux
        #expect(SocketAddress(raw).hostPortDescription == "[fe80::1%lo]:9")
    }

    @Test func datagramLimitsFollowTheFamily() throws {
        #expect(try SocketAddress(ipAddress: "127.0.0.1", port: 1).maximumDatagramPayload == 65507)
        #expect(try SocketAddress(ipAddress: "::1", port: 1).maximumDatagramPayload == 65527)
    }
}

@Suite struct NameResolverTests {
    @Test func resolvesLocalhost() throws {
        let addresses = try NameResolver.resolve(HostAndPort(host: "localhost", port: 7))
        #expect(addresses.contains(try SocketAddress(ipAddress: "127.0.0.1", port: 7)))
    }

    @Test func failureNamesTheHostAndTheReason() {
        let error = #expect(throws: EchoError.self) {
            try NameResolver.resolve(HostAndPort(host: "no-such-host.invalid", port: 7))
        }
        guard case .nameNotResolved(let host, let reason) = error else {
            Issue.record("expected nameNotResolved, got \(String(describing: error))")
            return
        }
        #expect(host == "no-such-host.invalid")
        #expect(!reason.isEmpty)
        #expect(error?.description.contains("no-such-host.invalid") == true)
    }
}

@Suite struct EventBudgetTests {
    @Test func reportsUpToTheBudgetPerWindowAndCountsTheRest() {
        var budget = EventBudget(perWindow: 3)
        let start: Int64 = 1_000
        var taken = 0
        for _ in 0..<10 where budget.take(now: start) { taken += 1 }
        #expect(taken == 3)
        #expect(budget.collectSuppressed(now: start + 10) == nil)  // window still open
        #expect(budget.hasSuppressed)
        #expect(budget.collectSuppressed(now: start + EventBudget.window) == 7)
        #expect(budget.collectSuppressed(now: start + EventBudget.window) == nil)
        let renewed = budget.take(now: start + EventBudget.window)
        #expect(renewed)  // a new window, a new budget
        #expect(budget.take(5, now: start + EventBudget.window) == 2)  // 1 + 2 of 3, and 3 not shown
        #expect(budget.collectSuppressed(now: start + 2 * EventBudget.window) == 3)
    }
}
