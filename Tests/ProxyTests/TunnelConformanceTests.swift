import EmbeddedLinks
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP2
import Testing
@testable import Proxy

/// A peer that speaks raw HTTP/2 bytes to a tunnel server's connection, as
/// `TunnelServer` builds it less TLS: the frame codec, the stream table and
/// the connection monitor. Streams it opens are answered 200 and echoed.
private final class RawTunnelPeer {
    static let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    let connection = EmbeddedChannel()
    let streams: TunnelStreams
    private(set) var opened = 0
    private var received = ByteBuffer()

    private final class Count {
        var opened = 0
    }

    init(maximumConcurrentStreams: Int = HBONE.defaultMaximumStreamsPerConnection) throws {
        let count = Count()
        streams = try HBONE.configureConnection(connection.pipeline.syncOperations, role: .server { stream, _ in
            count.opened += 1
            stream.respond(.ok, endStream: false)
        }, maximumConcurrentStreams: maximumConcurrentStreams)
        try connection.pipeline.syncOperations.addHandler(
            TunnelConnectionMonitor(idleTimeout: .minutes(5), logger: Logger(label: "test"), metrics: TunnelServerMetrics()))
        try connection.connect(to: SocketAddress(ipAddress: "10.77.0.1", port: 15008)).wait()
        openedCount = { count.opened }
    }

    private var openedCount: () -> Int = { 0 }
    var streamsOpened: Int { openedCount() }

    /// Sends raw bytes; an error the connection raised is not thrown (the
    /// monitor closes the connection, which is what the tests look at).
    func send(_ bytes: [UInt8]) {
        guard connection.isActive else { return }
        _ = try? connection.writeInbound(ByteBuffer(bytes: bytes))
        connection.embeddedEventLoop.run()
    }

    func send(_ text: String) {
        send(Array(text.utf8))
    }

    /// A frame: 24-bit length, type, flags, stream id, payload.
    static func frame(type: UInt8, flags: UInt8 = 0, stream: UInt32, _ payload: [UInt8] = []) -> [UInt8] {
        let length = payload.count
        return [UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags]
            + bigEndian(stream & 0x7fff_ffff) + payload
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24 & 0xff), UInt8(value >> 16 & 0xff), UInt8(value >> 8 & 0xff), UInt8(value & 0xff)]
    }

    /// A literal header field without indexing, with a literal name (RFC 7541 §6.2.2).
    static func literal(_ name: String, _ value: String) -> [UInt8] {
        precondition(name.utf8.count < 127 && value.utf8.count < 127)
        return [0x00, UInt8(name.utf8.count)] + Array(name.utf8) + [UInt8(value.utf8.count)] + Array(value.utf8)
    }

    static let connectBlock = literal(":method", "CONNECT") + literal(":authority", "10.77.0.2:8080")

    /// The client preface and an empty SETTINGS.
    func start() {
        send(Self.preface)
        send(Self.frame(type: 0x4, stream: 0))
    }

    func openStream(_ id: UInt32) {
        send(Self.frame(type: 0x1, flags: 0x4, stream: id, Self.connectBlock))
    }

    /// The frames the server wrote so far, as (type, flags, stream, payload).
    func framesWritten() throws -> [(type: UInt8, flags: UInt8, stream: UInt32, payload: [UInt8])] {
        while var bytes = try connection.readOutbound(as: ByteBuffer.self) {
            received.writeBuffer(&bytes)
        }
        var view = received
        var frames: [(UInt8, UInt8, UInt32, [UInt8])] = []
        while view.readableBytes >= 9, let header = view.getBytes(at: view.readerIndex, length: 9) {
            let length = Int(header[0]) << 16 | Int(header[1]) << 8 | Int(header[2])
            guard view.readableBytes >= 9 + length else { break }
            view.moveReaderIndex(forwardBy: 9)
            let payload = view.readBytes(length: length) ?? []
            let stream = UInt32(header[5]) << 24 | UInt32(header[6]) << 16 | UInt32(header[7]) << 8 | UInt32(header[8])
            frames.append((header[3], header[4], stream & 0x7fff_ffff, payload))
        }
        return frames
    }

    /// The error code of the server's GOAWAY, if it sent one.
    func goAwayCode() throws -> UInt32? {
        guard let goAway = try framesWritten().first(where: { $0.type == 0x7 }), goAway.payload.count >= 8 else { return nil }
        let code = goAway.payload[4..<8]
        return code.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The streams the server reset, with their error codes.
    func resets() throws -> [(stream: UInt32, code: UInt32)] {
        try framesWritten().filter { $0.type == 0x3 && $0.payload.count == 4 }.map { frame in
            (frame.stream, frame.payload.reduce(0) { $0 << 8 | UInt32($1) })
        }
    }
}

/// HTTP/2 protection of the tunnel port, by frame: every rule the frame codec
/// enforces must still hold with the tunnel's own stream table behind it.
@Suite struct TunnelConformanceTests {
    static let protocolError: UInt32 = 0x1
    static let flowControlError: UInt32 = 0x3
    static let frameSizeError: UInt32 = 0x6
    static let enhanceYourCalm: UInt32 = 0xb

    @Test func aWellFormedStreamIsAnswered() throws {
        let peer = try RawTunnelPeer()
        peer.start()
        peer.openStream(1)
        #expect(peer.streamsOpened == 1)
        let answers = try peer.framesWritten().filter { $0.type == 0x1 && $0.stream == 1 }
        #expect(answers.count == 1, "one HEADERS answer on stream 1")
        #expect(peer.connection.isActive)
    }

    @Test func aBadPrefaceClosesTheConnection() throws {
        let peer = try RawTunnelPeer()
        peer.send("GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        #expect(!peer.connection.isActive)
        #expect(peer.streamsOpened == 0)
    }

    @Test func invalidSettingsAreAConnectionError() throws {
        let tooLargeWindow = try RawTunnelPeer()
        tooLargeWindow.send(RawTunnelPeer.preface)
        // SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 (RFC 9113 §6.5.2).
        tooLargeWindow.send(RawTunnelPeer.frame(type: 0x4, stream: 0, [0x00, 0x04] + RawTunnelPeer.bigEndian(0x8000_0000)))
        #expect(try tooLargeWindow.goAwayCode() == Self.flowControlError)
        #expect(!tooLargeWindow.connection.isActive)

        let badLength = try RawTunnelPeer()
        badLength.send(RawTunnelPeer.preface)
        badLength.send(RawTunnelPeer.frame(type: 0x4, stream: 0, [0x00, 0x04, 0x00]))
        #expect(try badLength.goAwayCode() == Self.frameSizeError)
        #expect(!badLength.connection.isActive)
    }

    @Test func aWindowPushedPastItsLimitIsAFlowControlError() throws {
        let peer = try RawTunnelPeer()
        peer.start()
        peer.send(RawTunnelPeer.frame(type: 0x8, stream: 0, RawTunnelPeer.bigEndian(0x7fff_ffff)))
        #expect(try peer.goAwayCode() == Self.flowControlError)
        #expect(!peer.connection.isActive)
    }

    @Test func dataOnAnIdleStreamIsAProtocolError() throws {
        let peer = try RawTunnelPeer()
        peer.start()
        peer.send(RawTunnelPeer.frame(type: 0x0, stream: 5, Array("hello".utf8)))
        #expect(try peer.goAwayCode() == Self.protocolError)
        #expect(!peer.connection.isActive && peer.streamsOpened == 0)
    }

    @Test func dataOnAStreamThePeerResetIsRefusedAndTheTableForgetsIt() throws {
        let peer = try RawTunnelPeer()
        peer.start()
        peer.openStream(1)
        peer.send(RawTunnelPeer.frame(type: 0x3, stream: 1, RawTunnelPeer.bigEndian(0x8)))
        #expect(peer.streams.openStreams == 0, "a reset stream leaves the table")
        peer.send(RawTunnelPeer.frame(type: 0x0, stream: 1, Array("late".utf8)))
        let refused = try peer.resets().contains { $0.stream == 1 } || (try peer.goAwayCode()) != nil
        #expect(refused, "DATA on a closed stream is a stream or connection error")
    }

    @Test func continuationWithoutHeadersIsAProtocolError() throws {
        let peer = try RawTunnelPeer()
        peer.start()
        peer.send(RawTunnelPeer.frame(type: 0x9, flags: 0x4, stream: 1, RawTunnelPeer.literal("x-a", "b")))
        #expect(try peer.goAwayCode() == Self.protocolError)
        #expect(!peer.connection.isActive)
    }

    /// A small header block that would decode to far more than
    /// SETTINGS_MAX_HEADER_LIST_SIZE (16 KiB): one 100-byte entry put in the
    /// dynamic table, then referenced by index a thousand times.
    @Test func anHPACKBombIsRefusedWithoutOpeningAStream() throws {
        let peer = try RawTunnelPeer()
        peer.start()
        let value = String(repeating: "v", count: 100)
        // Literal with incremental indexing (0x40), new name: becomes index 62.
        let insert: [UInt8] = [0x40, 3] + Array("x-b".utf8) + [UInt8(value.utf8.count)] + Array(value.utf8)
        let references = [UInt8](repeating: 0x80 | 62, count: 1000)
        peer.send(RawTunnelPeer.frame(type: 0x1, flags: 0x4, stream: 1, RawTunnelPeer.connectBlock + insert + references))
        #expect(peer.streamsOpened == 0, "no stream opens for a header list over the limit")
        let refused = try peer.resets().contains { $0.stream == 1 } || (try peer.goAwayCode()) != nil
        #expect(refused)
    }

    /// Rapid reset (CVE-2023-44487): streams opened and at once reset. The
    /// codec ends the connection long before 10,000, and no stream is left in
    /// the table.
    @Test func tenThousandOpenThenResetStreamsEndTheConnectionAndLeaveNothing() throws {
        let peer = try RawTunnelPeer()
        peer.start()
        var sent = 0
        for index in 0..<10_000 where peer.connection.isActive {
            let id = UInt32(2 * index + 1)
            peer.send(RawTunnelPeer.frame(type: 0x1, flags: 0x4, stream: id, RawTunnelPeer.connectBlock)
                + RawTunnelPeer.frame(type: 0x3, stream: id, RawTunnelPeer.bigEndian(0x8)))
            sent += 1
        }
        #expect(!peer.connection.isActive, "the connection survived \(sent) open-then-reset streams")
        #expect(sent < 10_000)
        #expect(try peer.goAwayCode() == Self.enhanceYourCalm)
        #expect(peer.streams.openStreams == 0)
    }

    @Test func streamsBeyondTheConcurrencyLimitAreRefused() throws {
        let peer = try RawTunnelPeer(maximumConcurrentStreams: 2)
        peer.start()
        // The peer must have seen our SETTINGS; acknowledge them.
        peer.send(RawTunnelPeer.frame(type: 0x4, flags: 0x1, stream: 0))
        for id in [1, 3, 5] as [UInt32] { peer.openStream(id) }
        #expect(peer.streamsOpened == 2)
        let refused = try peer.resets().contains { $0.stream == 5 } || (try peer.goAwayCode()) != nil
        #expect(refused, "a third concurrent stream is refused")
    }

    /// Streams reset while their data was still arriving must not use up the
    /// connection's window: 40 MiB sent on streams that are then reset
    /// unread, two and a half times the connection window, and a new stream
    /// still carries its bytes.
    @Test func resetStreamsGiveTheirWindowBack() throws {
        let link = InMemoryLink()
        let client = try HBONE.configureConnection(link.client.pipeline.syncOperations, role: .client, maximumConcurrentStreams: 100)
        let received = ByteCounterBox()
        _ = try HBONE.configureConnection(link.server.pipeline.syncOperations, role: .server { stream, _ in
            stream.respond(.ok, endStream: false)
            if received.readsStreams {
                try? stream.pipeline.syncOperations.addHandler(ByteCounting(received))
                try? stream.startReading()
            }
        }, maximumConcurrentStreams: 100)
        try link.connect()
        let destination = try SocketAddress(ipAddress: "10.77.0.2", port: 8080)
        let chunk = ByteBuffer(repeating: 0x62, count: 1024 * 1024)
        for _ in 0..<10 {
            let opened = client.openStream(to: destination, timeout: .seconds(5), eventLoop: link.loop)
            try link.exchangeUntilQuiet()
            let stream = try opened.wait()
            for _ in 0..<4 { stream.write(chunk, promise: nil) }
            stream.flush()
            try link.exchangeUntilQuiet()
            stream.close(promise: nil)
            try link.exchangeUntilQuiet()
        }
        received.readsStreams = true
        let opened = client.openStream(to: destination, timeout: .seconds(5), eventLoop: link.loop)
        try link.exchangeUntilQuiet()
        let last = try opened.wait()
        last.writeAndFlush(ByteBuffer(string: "still flowing"), promise: nil)
        try link.exchangeUntilQuiet()
        #expect(received.count == 13)
    }
}

private final class ByteCounterBox {
    var count = 0
    var readsStreams = false
}

private final class ByteCounting: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let box: ByteCounterBox

    init(_ box: ByteCounterBox) {
        self.box = box
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        box.count += unwrapInboundIn(data).readableBytes
    }
}
