import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TestFixtures
import Testing
import TLS
@testable import Identity

/// Records the SAN and serial of every leaf it is asked to verify, then defers.
struct RecordingVerifier: PeerCertificateVerifier {
    let inner: any PeerCertificateVerifier
    let seen: NIOLockedValueBox<[(san: String, serial: String)]>
    func verify(peerChain: [Certificate]) -> Result<SpiffeID, PeerVerificationError> {
        if let leaf = peerChain.first {
            seen.withLockedValue { $0.append((leaf.uriSANs.first ?? "", leaf.serialNumberHex)) }
        }
        return inner.verify(peerChain: peerChain)
    }
}

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// Collects what arrives and hands out exactly as many bytes as asked for.
final class CollectHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private var received = ByteBuffer()
    private var waiting: (count: Int, promise: EventLoopPromise<String>)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        received.writeBuffer(&buffer)
        deliver()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        waiting?.promise.fail(error)
        waiting = nil
        context.close(promise: nil)
    }

    func expect(_ count: Int, _ promise: EventLoopPromise<String>) {
        waiting = (count, promise)
        deliver()
    }

    private func deliver() {
        guard let (count, promise) = waiting, received.readableBytes >= count else { return }
        waiting = nil
        promise.succeed(received.readString(length: count) ?? "")
    }
}

func roundTrip(_ channel: Channel, _ text: String) throws -> String {
    let promise = channel.eventLoop.makePromise(of: String.self)
    let timeout = channel.eventLoop.scheduleTask(in: .seconds(5)) { promise.fail(ChannelError.connectTimeout(.seconds(5))) }
    defer { timeout.cancel() }
    try channel.eventLoop.submit {
        try channel.pipeline.syncOperations.handler(type: CollectHandler.self).expect(text.utf8.count, promise)
        channel.writeAndFlush(ByteBuffer(string: text), promise: nil)
    }.wait()
    return try promise.futureResult.wait()
}

@Suite struct RotationTests {
    /// With a 4-second certificate lifetime the SVIDs rotate every ~2 s. A TLS
    /// connection opened at the start keeps working through several rotations
    /// (and past its certificates' expiry), while each new handshake presents the
    /// certificate current at that moment.
    @Test func longLivedConnectionSurvivesRotationsAndNewHandshakesUseNewCertificates() async throws {
        // Nine seconds of blocking round trips and sleeps, off the pool; the
        // checks are made here, in the test's own task, where they count.
        let outcome = try await onOwnThread { try Self.rotateWhileConnected() }
        #expect(outcome.failures.isEmpty, "\(outcome.failures)")
        #expect(outcome.certificatesPresented >= 3, "the certificates rotated several times (saw \(outcome.certificatesPresented))")
        #expect(outcome.outlivedFirstCertificates, "the long-lived connection outlived its first certificates")
        #expect(outcome.lastRoundTrip == "still here")
    }

    private struct RotationOutcome: Sendable {
        var failures: [String] = []
        var certificatesPresented = 0
        var outlivedFirstCertificates = false
        var lastRoundTrip = ""
    }

    private static func rotateWhileConnected() throws -> RotationOutcome {
        var outcome = RotationOutcome()
        let (ca, bundle) = try makeTestPKI()

        let serverID = try SpiffeID("spiffe://cluster.local/ns/shop/sa/orders")
        let clientID = try SpiffeID("spiffe://cluster.local/ns/shop/sa/checkout")
        let svids = SVIDManager(issuer: ca, lifetime: .seconds(4), logger: Logger(label: "test"), jitter: { _ in 0 })
        svids.setIdentities([serverID, clientID])
        let seen = NIOLockedValueBox<[(san: String, serial: String)]>([])
        let tls = WorkloadTLS(
            svids: svids, bundle: { bundle }, acceptedTrustDomains: ["cluster.local"],
            verifierWrapper: { RecordingVerifier(inner: $0, seen: seen) }
        )

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls.context(for: serverID, role: .server)))
                    try channel.pipeline.syncOperations.addHandler(EchoHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? server.close().wait() }
        guard let address = server.localAddress else { throw RotationTestError("the test server has no address") }

        func connect() throws -> Channel {
            let context = try tls.context(for: clientID, role: .client)
            return try ClientBootstrap(group: group)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context))
                        try channel.pipeline.syncOperations.addHandler(CollectHandler())
                    }
                }
                .connect(to: address).wait()
        }

        let longLived = try connect()
        defer { try? longLived.close().wait() }
        if try roundTrip(longLived, "hello before any rotation") != "hello before any rotation" { outcome.failures.append("the first round trip") }
        guard let firstLeafExpiry = svids.svid(for: serverID)?.leaf.notAfter else { throw RotationTestError("no SVID for \(serverID)") }

        var presented = Set<String>()
        let deadline = Date().addingTimeInterval(9)
        var round = 0
        while Date() < deadline {
            svids.tick()
            round += 1
            if try roundTrip(longLived, "round \(round)") != "round \(round)" { outcome.failures.append("the long-lived connection broke at round \(round)") }
            let fresh = try connect()
            if try roundTrip(fresh, "fresh \(round)") != "fresh \(round)" { outcome.failures.append("a fresh connection failed at round \(round)") }
            try fresh.close().wait()
            guard let current = svids.svid(for: serverID)?.leaf.serialNumberHex else { throw RotationTestError("no SVID for \(serverID)") }
            let lastPresentedByServer = seen.withLockedValue { $0.last(where: { $0.san == serverID.description })?.serial }
            if lastPresentedByServer != current { outcome.failures.append("round \(round): a new handshake presented \(lastPresentedByServer ?? "nothing"), not the current \(current)") }
            presented.insert(current)
            Thread.sleep(forTimeInterval: 0.4)
        }
        outcome.certificatesPresented = presented.count
        outcome.outlivedFirstCertificates = Int64(time(nil)) > firstLeafExpiry
        outcome.lastRoundTrip = try roundTrip(longLived, "still here")
        return outcome
    }
}

struct RotationTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
