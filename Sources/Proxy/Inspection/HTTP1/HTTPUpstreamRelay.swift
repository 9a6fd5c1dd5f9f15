import LinuxNet
import NIOCore
import NIOHTTP1

/// The workload side of an inspected connection: sends the requests the gate
/// allowed, and hands every response part back to it.
final class HTTPUpstreamRelay: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Never
    typealias OutboundOut = HTTPClientRequestPart

    var gate: HTTPRequestGate?
    private var context: ChannelHandlerContext?
    private var readPending = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        gate = nil
    }

    static func pair(
        inspector: HTTPRequestInspector, accessLog: AccessLogSink, limit: HTTPHeadSizeLimit, received: ByteCounter, sent: ByteCounter
    ) -> (HTTPRequestGate, HTTPUpstreamRelay) {
        let gate = HTTPRequestGate(inspector: inspector, accessLog: accessLog, limit: limit, received: received, sent: sent)
        let relay = HTTPUpstreamRelay()
        gate.relay = relay
        relay.gate = gate
        return (gate, relay)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        gate?.upstreamResponse(unwrapInboundIn(data))
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
            gate?.upstreamClosed()
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
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

    func send(_ part: HTTPClientRequestPart) {
        context?.write(wrapOutboundOut(part), promise: nil)
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
