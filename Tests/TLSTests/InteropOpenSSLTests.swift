import Foundation
import NIOCore
import NIOPosix
import Testing
@testable import TLS

/// Against a peer nobody here wrote: the `openssl` command line tool (OpenSSL 3.0
/// s_server and s_client), with the certificates from `CLITestPKI`.
@Suite(.serialized) struct InteropOpenSSLTests {
    let pki = CLITestPKI.shared

    private func serverArguments(port: Int, alpn: String = "h2") -> [String] {
        ["s_server", "-tls1_3", "-Verify", "1", "-cert", pki.certificatePath(.server), "-cert_chain", pki.intermediatePath(.server),
         "-key", pki.keyPath(.server), "-CAfile", pki.rootPath, "-alpn", alpn, "-accept", "127.0.0.1:\(port)", "-rev", "-naccept", "1"]
    }

    private func clientArguments(port: Int, identity: CLITestPKI.Identity? = .client, extra: [String] = ["-tls1_3", "-alpn", "h2"]) -> [String] {
        var arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.rootPath, "-servername", "server.example.org"]
        if let identity {
            arguments += ["-cert", pki.certificatePath(identity), "-cert_chain", pki.intermediatePath(identity), "-key", pki.keyPath(identity)]
        }
        return arguments + extra
    }

    // MARK: - Mutual TLS with OpenSSL

    @Test func ourClientWithOpenSSLServer() throws {
        let port = try freeLocalPort()
        let server = try OpenSSLProcess(serverArguments(port: port))
        defer { server.stop() }
        #expect(server.waitForOutput(containing: "ACCEPT"), "s_server did not start: \(server.output)")

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let report = group.next().makePromise(of: PeerReport.self)
        let got = LockedBox(0)
        let client = try SocketHarness.connect(group: group, port: port, context: try pki.context(.client)) {
            [ReportingHandler(report: report, greeting: ByteBuffer(string: "hello from mesh-agent\n"), onRead: { count in got.withLock { $0 = count } })]
        }.wait(seconds: 10)
        // s_server -rev answers each line reversed.
        #expect(waitUntil { got.current >= "tnega-hsem morf olleh".count })
        try client.close().wait()
        let seen = try report.futureResult.wait(seconds: 10)

        #expect(seen.handshakeCompleted)
        #expect(seen.negotiatedProtocol == "h2")
        #expect(seen.peerIdentity == (try SpiffeID(CLITestPKI.serverID)))
        #expect(seen.receivedText.contains("tnega-hsem morf olleh"))
        #expect(seen.errors.isEmpty, "\(seen.errors)")
        #expect(server.waitForOutput(containing: "ALPN protocols selected: h2"), "\(server.output)")
        #expect(server.output.contains("Verification: OK"), "s_server verified our client chain")
        #expect(server.output.contains("Protocol version: TLSv1.3"))
    }

    @Test func openSSLClientWithOurServer() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let report = group.next().makePromise(of: PeerReport.self)
        let server = try SocketHarness.startServer(group: group, context: try pki.context(.server), allowHalfClosure: false) {
            [ReportingHandler(report: report, echo: true)]
        }
        defer { try? server.close().wait() }

        let client = try OpenSSLProcess(clientArguments(port: server.localAddress!.port!))
        defer { client.stop() }
        client.send("ping from s_client\n")
        #expect(client.waitForOutput(containing: "ping from s_client"), "no echo: \(client.output)")
        client.closeInput()
        #expect(client.waitForExit() == 0, "\(client.output)")
        let seen = try report.futureResult.wait(seconds: 10)

        #expect(seen.handshakeCompleted)
        #expect(seen.negotiatedProtocol == "h2")
        #expect(seen.peerIdentity == (try SpiffeID(CLITestPKI.clientID)))
        #expect(seen.receivedText == "ping from s_client\n")
        #expect(seen.errors.isEmpty, "s_client closes with close_notify: \(seen.errors)")
        #expect(client.output.contains("ALPN protocol: h2"))
        #expect(client.output.contains("Verify return code: 0 (ok)"), "s_client verified our server chain")
        #expect(client.output.contains("TLSv1.3"))
    }

    // MARK: - Refused handshakes

    /// Runs s_client against a fresh server of ours and returns what the server saw.
    private func serverRefusal(_ arguments: (Int) -> [String]) throws -> (PeerReport, String) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let report = group.next().makePromise(of: PeerReport.self)
        let server = try SocketHarness.startServer(group: group, context: try pki.context(.server), allowHalfClosure: false) {
            [ReportingHandler(report: report)]
        }
        defer { try? server.close().wait() }
        let client = try OpenSSLProcess(arguments(server.localAddress!.port!))
        defer { client.stop() }
        let seen = try report.futureResult.wait(seconds: 10)
        _ = client.waitForExit(timeout: 5)
        return (seen, "\(client.output)")
    }

    @Test func clientWithoutACertificateIsRefused() throws {
        let (seen, output) = try serverRefusal { clientArguments(port: $0, identity: nil) }
        #expect(!seen.handshakeCompleted)
        guard case .peerVerificationFailed(let error) = seen.errors.first else {
            Issue.record("expected peerVerificationFailed, got \(seen.errors)")
            return
        }
        #expect(error.reason == .noCertificate)
        #expect(output.contains("certificate required"), "s_client got the certificate_required alert: \(output)")
    }

    @Test func tls12IsRefused() throws {
        let (seen, output) = try serverRefusal { clientArguments(port: $0, extra: ["-tls1_2", "-alpn", "h2"]) }
        guard case .handshakeFailed(let failure) = seen.errors.first else {
            Issue.record("expected handshakeFailed, got \(seen.errors)")
            return
        }
        #expect(failure.reason == .protocolVersion, "\(failure)")
        #expect(output.contains("protocol version"), "\(output)")
    }

    @Test func clientFromAnUnknownRootIsRefused() throws {
        let (seen, output) = try serverRefusal { clientArguments(port: $0, identity: .rogue) }
        guard case .peerVerificationFailed(let error) = seen.errors.first else {
            Issue.record("expected peerVerificationFailed, got \(seen.errors)")
            return
        }
        #expect(error.reason == .unknownIssuer, "\(error)")
        #expect(output.contains("unknown ca"), "\(output)")
    }

    @Test(arguments: [["-alpn", "http/1.1"], []])
    func alpnMismatchIsRefused(alpn: [String]) throws {
        let (seen, output) = try serverRefusal { clientArguments(port: $0, extra: ["-tls1_3"] + alpn) }
        guard case .handshakeFailed(let failure) = seen.errors.first else {
            Issue.record("expected handshakeFailed, got \(seen.errors)")
            return
        }
        #expect(failure.reason == .noApplicationProtocol, "\(failure)")
        #expect(output.contains("no application protocol"), "\(output)")
    }

    @Test func ourClientRefusesAServerWithoutH2() throws {
        let port = try freeLocalPort()
        let server = try OpenSSLProcess(serverArguments(port: port, alpn: "http/1.1"))
        defer { server.stop() }
        #expect(server.waitForOutput(containing: "ACCEPT"), "s_server did not start: \(server.output)")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let report = group.next().makePromise(of: PeerReport.self)
        _ = try SocketHarness.connect(group: group, port: port, context: try pki.context(.client)) {
            [ReportingHandler(report: report)]
        }.wait(seconds: 10)
        let seen = try report.futureResult.wait(seconds: 10)
        #expect(!seen.handshakeCompleted)
        guard case .handshakeFailed(let failure) = seen.errors.first else {
            Issue.record("expected handshakeFailed, got \(seen.errors)")
            return
        }
        #expect(failure.reason == .noApplicationProtocol, "\(failure)")
    }

    @Test func ourClientRefusesAServerFromAnUnknownRoot() throws {
        let port = try freeLocalPort()
        let arguments = ["s_server", "-tls1_3", "-Verify", "1", "-cert", pki.certificatePath(.rogue), "-cert_chain", pki.intermediatePath(.rogue),
                         "-key", pki.keyPath(.rogue), "-CAfile", pki.rootPath, "-alpn", "h2", "-accept", "127.0.0.1:\(port)", "-naccept", "1"]
        let server = try OpenSSLProcess(arguments)
        defer { server.stop() }
        #expect(server.waitForOutput(containing: "ACCEPT"), "s_server did not start: \(server.output)")
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let report = group.next().makePromise(of: PeerReport.self)
        _ = try SocketHarness.connect(group: group, port: port, context: try pki.context(.client)) {
            [ReportingHandler(report: report)]
        }.wait(seconds: 10)
        let seen = try report.futureResult.wait(seconds: 10)
        guard case .peerVerificationFailed(let error) = seen.errors.first else {
            Issue.record("expected peerVerificationFailed, got \(seen.errors)")
            return
        }
        #expect(error.reason == .unknownIssuer)
        #expect(server.waitForOutput(containing: "unknown ca"), "\(server.output)")
    }
}
