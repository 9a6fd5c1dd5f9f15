import NIOCore
import NIOHTTP1
import Policy

extension RequestRefusal {
    /// The refusal for an error NIOHTTP1's decoder raised on a request's bytes.
    init(decoderError error: any Error, limit: HTTPHeadSizeLimit) {
        if HTTPHeadSizeLimit.isExceeded(by: error) {
            self.init(.requestHeaderFieldsTooLarge, "request head is over \(limit.maximumBytes) bytes or \(limit.maximumFields) fields")
            return
        }
        guard let parserError = error as? HTTPParserError else {
            self.init(.badRequest, "malformed HTTP/1.1 request")
            return
        }
        switch parserError {
        case .invalidVersion:
            // llhttp also reports a malformed version (a bare LF after it) this way.
            self.init(.httpVersionNotSupported, "request line has an unsupported or malformed HTTP version; use HTTP/1.1")
        case .invalidContentLength, .unexpectedContentLength:
            self.init(.badRequest, "malformed HTTP/1.1 request: Content-Length is invalid, repeated or combined with Transfer-Encoding")
        case .invalidChunkSize:
            self.init(.badRequest, "malformed HTTP/1.1 request: invalid chunk size")
        default:
            self.init(.badRequest, "malformed HTTP/1.1 request (\(parserError))")
        }
    }

    /// The status to answer with.
    var responseStatus: HTTPResponseStatus {
        HTTPResponseStatus(statusCode: status.rawValue)
    }
}
