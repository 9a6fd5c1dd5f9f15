import NIOCore

/// The protocols an inspected connection can be carried as.
enum InspectedProtocol: Equatable, Sendable {
    case http1
    /// HTTP/2 with prior knowledge (gRPC and other h2c clients that skip the upgrade).
    case http2
}

/// Tells from an inspected connection's first bytes which protocol it speaks.
///
/// HTTP/2 with prior knowledge starts with the 24-byte connection preface and
/// nothing else does: RFC 9113 chose `PRI * HTTP/2.0` so that an HTTP/1.1 parser
/// refuses it. The first byte that differs from the preface therefore means
/// HTTP/1.1 (or garbage, which the HTTP/1.1 path refuses with 400), and at most
/// 24 bytes are ever needed.
struct ProtocolSniff {
    static let http2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

    /// How many bytes of the preface have been seen, in order.
    private(set) var matched = 0
    private(set) var verdict: InspectedProtocol?

    /// Looks at the connection's next bytes; the protocol once it is known.
    mutating func next(_ bytes: some Sequence<UInt8>) -> InspectedProtocol? {
        guard verdict == nil else { return verdict }
        for byte in bytes {
            guard byte == Self.http2Preface[matched] else {
                verdict = .http1
                return verdict
            }
            matched += 1
            if matched == Self.http2Preface.count {
                verdict = .http2
                return verdict
            }
        }
        return nil
    }

    /// The client stopped sending before the protocol was known: what it sent
    /// (a part of the preface, or nothing) is the HTTP/1.1 path's to answer.
    mutating func ended() -> InspectedProtocol {
        if verdict == nil { verdict = .http1 }
        return verdict ?? .http1
    }
}

/// The first handler on the client side of an inspected connection: holds the
/// client's first bytes until `ProtocolSniff` knows the protocol, has that
/// protocol's handlers installed behind it (on both sides of the connection),
/// hands them the bytes it held and leaves the pipeline.
final class ProtocolSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var sniff = ProtocolSniff()
    private var held: ByteBuffer?
    private var decided = false
    /// Installs the handlers for the protocol found, behind this handler.
    private let install: (InspectedProtocol) throws -> Void
    /// The client went away before its protocol was known.
    private let abandoned: () -> Void

    init(install: @escaping (InspectedProtocol) throws -> Void, abandoned: @escaping () -> Void) {
        self.install = install
        self.abandoned = abandoned
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else {
            context.fireChannelRead(data)
            return
        }
        var buffer = unwrapInboundIn(data)
        let found = sniff.next(buffer.readableBytesView)
        if var bytes = held {
            bytes.writeBuffer(&buffer)
            held = bytes
        } else {
            held = buffer
        }
        if let found, decide(found, context: context) {
            // Inside a read: the channel's own readComplete follows.
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard !decided, let event = event as? ChannelEvent, event == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        if decide(sniff.ended(), context: context) {
            // The bytes went on outside a read: end that read for the new handlers.
            context.fireChannelReadComplete()
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !decided {
            decided = true
            abandoned()
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard decided else {
            // A reset before the first request: nothing to answer.
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }

    /// Installs the protocol's handlers and hands them the bytes held; false
    /// when they could not be installed and the connection is closing.
    private func decide(_ found: InspectedProtocol, context: ChannelHandlerContext) -> Bool {
        decided = true
        do {
            try install(found)
        } catch {
            held = nil
            context.close(promise: nil)
            return false
        }
        if let bytes = held {
            held = nil
            context.fireChannelRead(wrapInboundOut(bytes))
        }
        return true
    }
}

/// Keeps the upstream side of an inspected connection from reading until the
/// client's protocol is known and its handlers are in place. HTTP servers do
/// not speak first, so nothing is held back that a protocol would have needed.
final class UpstreamReadHold: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private var context: ChannelHandlerContext?
    private var readPending = false
    private var released = false
    /// The upstream closed before the client's protocol was known.
    private let closed: () -> Void

    init(closed: @escaping () -> Void) {
        self.closed = closed
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func read(context: ChannelHandlerContext) {
        if released {
            context.read()
        } else {
            readPending = true
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !released { closed() }
        context.fireChannelInactive()
    }

    /// The protocol's handlers are in place behind this one: leave, and let
    /// the read that was asked for meanwhile start from the pipeline's end, so
    /// that the new handlers' own back-pressure decides it.
    func release() {
        released = true
        guard let context else { return }
        let channel = context.channel
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        if readPending {
            readPending = false
            channel.read()
        }
    }
}
