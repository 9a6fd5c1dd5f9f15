import NIOCore
import Policy
import NIOEmbedded
import Testing
@testable import Proxy

@Suite struct IPPrefixTests {
    @Test(arguments: [
        ("10.77.0.0/16", "10.77.3.4", true), ("10.77.0.0/16", "10.78.0.1", false),
        ("0.0.0.0/0", "192.0.2.1", true), ("10.77.1.2", "10.77.1.2", true), ("10.77.1.2", "10.77.1.3", false),
        ("fd77::/64", "fd77::1", true), ("fd77::/64", "fd78::1", false), ("fd77::/64", "10.77.0.1", false),
        ("10.0.0.0/8", "::ffff:10.0.0.1", false),
    ])
    func containment(prefix: String, address: String, expected: Bool) throws {
        let network = try IPPrefix(prefix)
        #expect(network.contains(try SocketAddress(ipAddress: address, port: 1)) == expected)
    }

    @Test(arguments: ["10.77.0.1/16", "10.77.0.0/33", "fd77::/129", "nonsense/8", "/8", "10.0.0.0/x", "10.0.0.0/8/8"])
    func invalidPrefixesAreRefused(text: String) {
        #expect(throws: IPPrefixError.self) { try IPPrefix(text) }
    }

    @Test func descriptionIsCanonical() throws {
        #expect(try IPPrefix("fd77:0:0::/64").description == "fd77::/64")
        #expect(try IPPrefix("10.77.0.0/16").description == "10.77.0.0/16")
    }
}

@Suite struct AccessLogEntryTests {
    @Test func jsonLineHasTheDocumentedFields() throws {
        var entry = AccessLogEntry(time: 1_795_000_000.25, direction: .outbound, tls: .none, action: .allow, reason: "passthrough")
        entry.sourceAddress = try SocketAddress(ipAddress: "10.77.1.1", port: 40000)
        entry.destinationAddress = try SocketAddress(ipAddress: "fd77::2", port: 8080)
        entry.sourceWorkload = "shop/orders"
        entry.sourceIdentity = "spiffe://td/ns/shop/sa/orders"
        entry.bytesSent = 5
        entry.bytesReceived = 7
        entry.reason = "quote \" backslash \\ newline \n control \u{1}"
        let line = entry.jsonLine()
        #expect(line.hasSuffix("}\n"))
        #expect(line.hasPrefix("{\"time\":\"2026-11-18T11:06:40.250Z\","))
        #expect(line.contains("\"direction\":\"outbound\""))
        #expect(line.contains("\"src_addr\":\"10.77.1.1:40000\""))
        #expect(line.contains("\"dst_addr\":\"[fd77::2]:8080\""))
        #expect(line.contains("\"src_identity\":\"spiffe://td/ns/shop/sa/orders\""))
        #expect(line.contains("\"dst_identity\":null"))
        #expect(line.contains("\"tls\":\"none\""))
        #expect(line.contains("\"action\":\"allow\""))
        #expect(line.contains("\"bytes_sent\":5,\"bytes_received\":7"))
        #expect(line.contains("\"reason\":\"quote \\\" backslash \\\\ newline \\n control \\u0001\""))
        #expect(line.filter { $0 == "\n" }.count == 1, "one entry is one line")
    }
}

extension AccessLogEntryTests {
    /// Every field set, one line compared whole: the format is a contract
    /// (DESIGN.md §6), whatever builds it.
    @Test func aFullRequestLineIsExactlyThis() throws {
        var entry = AccessLogEntry(time: 1_795_000_000.007, direction: .inbound, tls: .mutual, action: .deny, reason: "denied by policy")
        entry.sourceAddress = try SocketAddress(ipAddress: "10.77.0.1", port: 5)
        entry.destinationAddress = try SocketAddress(ipAddress: "255.0.10.200", port: 65535)
        entry.sourceWorkload = "shop/checkout"
        entry.sourceIdentity = "spiffe://cluster.local/ns/shop/sa/checkout"
        entry.destinationWorkload = "shop/orders"
        entry.destinationIdentity = "spiffe://cluster.local/ns/shop/sa/orders"
        entry.protocol = "http"
        entry.policy = "shop/deny-delete"
        entry.bytesSent = 18_446_744_073_709_551_615
        entry.bytesReceived = 0
        entry.durationMilliseconds = 12.3456
        entry.audited = "shop/audit-all"
        entry.audit = "allow"
        entry.auditPolicy = "shop/dry"
        entry.auditRule = 2
        entry.method = "DELETE"
        entry.path = "/orders/ü\u{7f}\t"
        entry.status = 403
        entry.requestPrincipal = "issuer/subject"
        let expected = #"{"time":"2026-11-18T11:06:40.007Z","direction":"inbound","src_addr":"10.77.0.1:5","src_workload":"shop/checkout","#
            + #""src_identity":"spiffe://cluster.local/ns/shop/sa/checkout","dst_addr":"255.0.10.200:65535","dst_workload":"shop/orders","#
            + #""dst_identity":"spiffe://cluster.local/ns/shop/sa/orders","tls":"mutual","protocol":"http","action":"deny","#
            + #""policy":"shop/deny-delete","reason":"denied by policy","bytes_sent":18446744073709551615,"bytes_received":0,"#
            + #""duration_ms":12.346,"audited":"shop/audit-all","audit":"allow","audit_policy":"shop/dry","audit_rule":2,"method":"DELETE","#
            + #""path":"/orders/ü"# + "\u{7f}" + #"\t","request_principal":"issuer/subject","status":403}"# + "\n"
        #expect(entry.jsonLine() == expected)
        // A connection's requests share its parties' part of the line: the same line.
        #expect(entry.cachingParties().jsonLine() == expected)
    }

    /// A party changed after its part of the line was built is written as
    /// changed: the change drops what was built.
    @Test func changingAPartyAfterCachingIsWritten() throws {
        var entry = AccessLogEntry(time: 0, direction: .inbound, tls: .mutual, action: .allow, reason: "hbone")
        entry.sourceIdentity = "spiffe://cluster.local/ns/shop/sa/checkout"
        var request = entry.cachingParties().requestEntry(at: 1)
        request.sourceIdentity = "spiffe://cluster.local/ns/shop/sa/other"
        request.sourceAddress = try SocketAddress(ipAddress: "10.77.0.9", port: 1)
        request.tls = .none
        var fresh = entry.requestEntry(at: 1)
        fresh.sourceIdentity = "spiffe://cluster.local/ns/shop/sa/other"
        fresh.sourceAddress = try SocketAddress(ipAddress: "10.77.0.9", port: 1)
        fresh.tls = .none
        #expect(request.jsonLine() == fresh.jsonLine())
        #expect(request.jsonLine().contains(#""src_identity":"spiffe://cluster.local/ns/shop/sa/other","#))
        #expect(request.jsonLine().contains(#""tls":"none""#))
    }

    @Test func durationsKeepTheirShortestForm() {
        for (milliseconds, written) in [
            (0.0, "0.0"), (1.0, "1.0"), (0.0004, "0.0"), (0.001, "0.001"), (2.5, "2.5"), (1234.5678, "1234.568"), (0.0996, "0.1"),
            (10.05, "10.05"), (999.9996, "1000.0"), (-1.0, "-1.0"),
        ] {
            var entry = AccessLogEntry(time: 0, direction: .outbound, tls: .none, action: .allow, reason: "r")
            entry.durationMilliseconds = milliseconds
            #expect(entry.jsonLine().contains("\"duration_ms\":\(written)}"), "\(milliseconds)")
        }
    }
}

@Suite struct SpliceStateTests {
    @Test func outputEndsOnlyAfterTheQueueDrains() {
        var state = SpliceSideState()
        #expect(state.partnerFinished() == .drainThenEndOutput)
        #expect(state.partnerFinished() == .none, "a second finish (FIN, then clean close) starts no second drain")
        #expect(state.outputDrained() == .shutdownOutput)
        #expect(state.inputEnded() == .closeChannel)
    }

    @Test func inputEndedFirstStillEndsOutputAfterTheDrain() {
        // A socket escalates this shutdown to a full close; a tunnel stream needs
        // its END_STREAM, which a plain close would replace by a reset.
        var state = SpliceSideState()
        #expect(state.inputEnded() == .none)
        #expect(state.partnerFinished() == .drainThenEndOutput)
        #expect(state.outputDrained() == .shutdownOutput)
        #expect(state.inputEnded() == .closeChannel, "a late duplicate input end finishes the channel")
    }

    @Test func aCloseIsCleanOnlyAfterOurFINAndWithoutErrors() {
        var clean = SpliceSideState()
        #expect(!clean.closedCleanly)
        _ = clean.partnerFinished()
        #expect(clean.closedCleanly)

        var failed = SpliceSideState()
        _ = failed.partnerFinished()
        #expect(failed.errorOccurred() == .closeChannel)
        #expect(!failed.closedCleanly)
    }
}

@Suite struct SpliceHandlerTests {
    /// Two embedded channels spliced together: bytes cross in both directions.
    /// (EmbeddedChannel cannot close only its output, so half-close is covered by
    /// `SpliceStateTests` and, on real sockets, by the integration tests.)
    @Test func bytesCrossThePair() throws {
        let loop = EmbeddedEventLoop()
        let left = EmbeddedChannel(loop: loop)
        let right = EmbeddedChannel(loop: loop)
        let (leftHandler, rightHandler) = SpliceHandler.pair()
        try left.pipeline.syncOperations.addHandler(leftHandler)
        try right.pipeline.syncOperations.addHandler(rightHandler)
        try left.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try right.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()

        try left.writeInbound(ByteBuffer(string: "hello"))
        #expect(try right.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "hello"))
        try right.writeInbound(ByteBuffer(string: "world!"))
        #expect(try left.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "world!"))
        #expect(leftHandler.bytesRead == 5)
        #expect(rightHandler.bytesRead == 6)
    }

    /// An upstream that became active (and asked to read) before the client's
    /// handler was in place still gets its read once the client side arrives.
    @Test func aReadAskedBeforeThePartnerExistsIsReleasedWhenItArrives() throws {
        let loop = EmbeddedEventLoop()
        let client = EmbeddedChannel(loop: loop)
        let upstream = EmbeddedChannel(loop: loop)
        let reads = ReadCounter()
        let (clientHandler, upstreamHandler) = SpliceHandler.pair()
        try upstream.pipeline.syncOperations.addHandlers([reads, upstreamHandler])
        try upstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        upstream.read()
        #expect(reads.count == 0, "no client to write to yet: the read is held")

        try client.pipeline.syncOperations.addHandler(clientHandler)
        #expect(reads.count == 1, "the client side arrived: the held read goes out")
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try upstream.writeInbound(ByteBuffer(string: "echo"))
        #expect(try client.readOutbound(as: ByteBuffer.self) == ByteBuffer(string: "echo"))
    }

    /// Counts the reads that reach the channel (it sits at the head's end).
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var count = 0
        func read(context: ChannelHandlerContext) {
            count += 1
            context.read()
        }
    }

    @Test func closingOneSideClosesTheOther() throws {
        let loop = EmbeddedEventLoop()
        let left = EmbeddedChannel(loop: loop)
        let right = EmbeddedChannel(loop: loop)
        let (leftHandler, rightHandler) = SpliceHandler.pair()
        try left.pipeline.syncOperations.addHandler(leftHandler)
        try right.pipeline.syncOperations.addHandler(rightHandler)
        try left.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try right.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        _ = try left.finish()
        #expect(!right.isActive)
    }
}
