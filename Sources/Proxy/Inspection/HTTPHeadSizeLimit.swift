import NIOCore
import NIOHTTP1

/// How large an inbound request head (HTTP/1.1, or an HTTP/2 header block) may grow before the agent refuses it
/// (431), so that a client cannot make the agent buffer without bound.
///
/// NIOHTTP1's decoder counts the bytes of the request-target and of every header
/// name and value (trailers included) as they arrive and fails as soon as a count
/// passes its limit, so the limit is mostly enforced by configuring it. One gap
/// remains: the whitespace between a header's colon and its value is not counted,
/// yet the decoder keeps the name, and that whitespace, buffered until the value
/// begins. Capping the decoder's input buffer at the same size closes it; the cap
/// costs nothing otherwise, because the decoder consumes everything but an
/// unfinished header field.
public struct HTTPHeadSizeLimit: Hashable, Sendable {
    /// The most bytes of request-target, header names and values one head may have.
    public var maximumBytes: Int
    /// The most header fields (and trailer fields) one request may have; each costs
    /// memory beyond its bytes.
    public var maximumFields: Int

    public init(maximumBytes: Int = 64 * 1024, maximumFields: Int = 100) {
        self.maximumBytes = maximumBytes
        self.maximumFields = maximumFields
    }

    /// The request decoder to put first in an inbound HTTP/1.1 pipeline. Left-over
    /// bytes are forwarded because, after an upgrade, they belong to the new protocol.
    func makeRequestDecoder() -> ByteToMessageHandler<HTTPRequestDecoder> {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = maximumBytes
        limits.maxHeaderListSize = maximumBytes
        limits.maxHeaderFieldCount = maximumFields
        return ByteToMessageHandler(
            HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes, informationalResponseStrategy: .drop, limitConfiguration: limits),
            maximumBufferSize: maximumBytes)
    }

    /// Whether an error the decoder raised means a head over these limits.
    static func isExceeded(by error: any Error) -> Bool {
        if error is ByteToMessageDecoderError.PayloadTooLargeError { return true }
        if let parserError = error as? HTTPParserError, case .headerOverflow = parserError { return true }
        return false
    }
}
