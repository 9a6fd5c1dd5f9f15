import LinuxNet
import NIOCore
import Policy

/// The workload side of an inspected connection: sends the requests the gate
/// allowed, reads the workload's responses (`HTTP1ResponseReader`) and hands
/// every part back to the gate.
final class HTTPUpstreamRelay: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Never
    typealias OutboundOut = ByteBuffer

    var gate: HTTPRequestGate?
    private var context: ChannelHandlerContext?
    private var readPending = false
    private var reader = HTTP1ResponseReader()
    /// The start of a head or a line that has not all arrived.
    private var unread: ByteBuffer?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        gate = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if var held = unread {
            unread = nil
            held.writeBuffer(&buffer)
            buffer = held
        }
        do {
            while let part = try reader.read(&buffer) {
                gate?.upstreamResponse(part)
            }
        } catch {
            // The client must never be sent a response framed one way here
            // and read another way there: the exchange ends.
            HTTPInspectionMetrics.malformedResponse.increment()
            context.close(promise: nil)
            return
        }
        if buffer.readableBytes > 0 { unread = buffer }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        gate?.upstreamFlush()
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        if gate?.isWritable ?? false {
            context.read()
        } else {
            readPending = true
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            endResponseDelimitedByClose()
            gate?.upstreamClosed()
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        endResponseDelimitedByClose()
        gate?.upstreamClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A malformed response or a reset: the exchange cannot continue.
        context.close(promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { gate?.relayBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    /// A response without a length or chunks ends when the workload closes.
    private func endResponseDelimitedByClose() {
        guard reader.inputEnded() else { return }
        var buffer = unread ?? ByteBuffer()
        unread = nil
        while let part = try? reader.read(&buffer) {
            gate?.upstreamResponse(part)
        }
    }

    /// A request's head, which the workload answers after those sent before.
    func send(_ head: ByteBuffer, answersHEAD: Bool) {
        reader.expectResponse(toHEAD: answersHEAD)
        send(head)
    }

    /// Request bytes, as they are.
    func send(_ bytes: ByteBuffer) {
        context?.write(wrapOutboundOut(bytes), promise: nil)
    }

    func flush() {
        context?.flush()
    }

    var isWritable: Bool { context?.channel.isWritable ?? false }

    func clientBecameWritable() {
        if readPending {
            readPending = false
            context?.read()
        }
    }

    func clientClosed() {
        context?.close(promise: nil)
    }

    /// Every exchange is done and the client has gone: close the workload's side.
    func finish() {
        context?.close(promise: nil)
    }
}

/// The handlers that inspect an HTTP/1.1 connection: the gate for the
/// client's pipeline, the relay for the workload's.
package enum HTTP1Inspection {
    package static func handlers(
        inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, received: ByteCounter, sent: ByteCounter
    ) -> (client: any ChannelHandler, upstream: any ChannelHandler) {
        let gate = HTTPRequestGate(inspector: inspector, accessLog: accessLog, limit: limit, received: received, sent: sent)
        let relay = HTTPUpstreamRelay()
        gate.relay = relay
        relay.gate = gate
        return (gate, relay)
    }
}
