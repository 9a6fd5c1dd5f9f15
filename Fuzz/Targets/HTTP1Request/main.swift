@testable import FuzzSupport
import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Policy
@testable import Proxy
import TestFixtures

/// Requests as the agent reads them (`HTTP1RequestReader`), decided one by
/// one by `HTTPRequestInspector` (the head's checks, path normalization, the
/// token, policy) at the JWT fixtures' time, so tokens can verify. Besides
/// crashes it looks for:
/// - answers that depend on how the bytes were cut into reads: at once, cut
///   where the first byte says, and byte by byte must read the same requests,
///   pass on the same bytes and refuse at the same point;
/// - a forwarded head that another HTTP/1.1 parser (NIOHTTP1's llhttp) reads
///   differently from what the agent decided: it must read exactly one head,
///   with the decided method, target and fields, framed the same way;
/// - reasons that could not be logged.
Fuzzing.run { bytes in
    let whole = Fuzzing.requireSameReading(of: bytes, read)
    for request in whole.received {
        let outcome = MeshFixture.inspector.inspect(request.head, keepAlive: request.isKeepAlive, now: JWTFixtures.now)
        if case .respond(let response, let entry) = outcome {
            Fuzzing.requireLoggable(entry.reason, "the reason for refusing \(request.head.method) \(request.head.target.debugDescription)")
            Fuzzing.requireLoggable(response.body.trimmingCharacters(in: ["\n"]), "the answer to \(request.head.method) \(request.head.target.debugDescription)")
        }
        guard case .forward(let forwarding, _) = outcome else { continue }
        let path = HTTPPath.normalize(forwarding.target).map(\.path)
        Fuzzing.require((try? path.get()).map(MeshFixture.mayReachWorkload) == true, "forwarded \(request.head.method) \(forwarding.target.debugDescription), which policy denies")
        checkReadBackTheSame(request, forwarding)
    }
    if let refusal = whole.refusal {
        Fuzzing.requireLoggable(refusal.reason, "the reason for refusing the bytes")
    }
}

/// What the reader made of some bytes.
private struct Read: Equatable, CustomStringConvertible {
    var heads: [RequestHead] = []
    /// Every byte passed on, in order: heads, payload, chunk lines.
    var passed: [UInt8] = []
    var ends = 0
    var refusal: RequestRefusal?
    var received: [ReceivedRequestHead] = []

    static func == (left: Read, right: Read) -> Bool {
        left.heads == right.heads && left.passed == right.passed && left.ends == right.ends && left.refusal == right.refusal
    }

    var description: String { "\(heads.map { "\($0.method) \($0.target)" }), \(passed.count) bytes, \(ends) ends, refused: \(String(describing: refusal))" }
}

private func read(_ reads: [[UInt8]]) -> Read {
    var reader = HTTP1RequestReader(limit: HTTPHeadSizeLimit(maximumBytes: 4096, maximumFields: 20))
    var result = Read()
    var unread = ByteBuffer()
    for bytes in reads {
        unread.writeBytes(bytes)
        do {
            while let part = try reader.read(&unread) {
                switch part {
                case .head(let head):
                    result.heads.append(head.head)
                    result.received.append(head)
                    result.passed += head.bytes.readableBytesView
                case .body(.payload(let bytes)), .body(.framing(let bytes)):
                    result.passed += bytes.readableBytesView
                case .body(.end):
                    result.ends += 1
                }
            }
        } catch {
            result.refusal = error
            return result
        }
    }
    return result
}

/// The head the agent sends for `request` is one head that llhttp reads
/// exactly as the agent decided it: method, the decided target, version, the
/// fields (but those removed) and so the same framing.
private func checkReadBackTheSame(_ request: ReceivedRequestHead, _ forwarding: HTTPRequestInspector.Forwarding) {
    let wire = request.forwarded(forwarding)
    let channel = EmbeddedChannel()
    defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
    var heads: [HTTPRequestHead] = []
    var failure: (any Error)?
    do {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(HTTPRequestDecoder()))
        try channel.writeInbound(wire)
    } catch {
        failure = error
    }
    while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
        if case .head(let head) = part { heads.append(head) }
    }
    Fuzzing.require(failure == nil && heads.count == 1, "the forwarded head reads back as \(heads.count) heads, error \(String(describing: failure)): \(String(buffer: wire).debugDescription)")
    guard let head = heads.first else { return }
    Fuzzing.require(
        head.method.rawValue == request.head.method && head.uri == forwarding.target
            && head.version.major == request.head.version.major && head.version.minor == request.head.version.minor,
        "forwarded \(request.head.method) \(forwarding.target), read back \(head)")
    let sent = request.head.fields.filter { !forwarding.removing.contains($0.name) }.map { [$0.name, $0.value] }
    // llhttp keeps a value's trailing whitespace, which is not part of it (RFC 9110 5.5).
    let read = head.headers.map { [$0.name.lowercased(), $0.value.trimmingCharacters(in: [" ", "\t"])] }
    Fuzzing.require(read == sent, "forwarded header fields \(sent), read back \(read)")
}
