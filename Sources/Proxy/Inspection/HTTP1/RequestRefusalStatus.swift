import NIOCore
import NIOHTTP1
import Policy

extension RequestRefusal {
    /// The status to answer with.
    var responseStatus: HTTPResponseStatus {
        HTTPResponseStatus(statusCode: status.rawValue)
    }
}
