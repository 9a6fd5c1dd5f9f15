
/// How large an inbound request head (HTTP/1.1, or an HTTP/2 header block) may grow before the agent refuses it
/// (431), so that a client cannot make the agent buffer without bound.
///
/// The bytes of the request-target and of every header name and value count
/// (trailers count on their own). The HTTP/1.1 reader also bounds what
/// spacing and line ends may add (`HTTP1HeadBudget`), and refuses a line
/// that passes the limit before its end arrives.
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
}
