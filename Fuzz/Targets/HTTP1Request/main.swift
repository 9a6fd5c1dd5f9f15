@testable import FuzzSupport
import Foundation
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Policy
@testable import Proxy
import TestFixtures

/// Request heads as the agent reads them, decided one by one: NIOHTTP1's
/// decoder as the agent configures it, then `HTTPRequestInspector` (the
/// head's checks, path normalization, the token, policy) at the JWT
/// fixtures' time, so tokens can verify. What the agent would forward is
/// encoded as it is sent to the workload and decoded again by a fresh
/// parser, which must read the same request. Also: the request-line scan
/// decides the same whether the bytes arrive at once or one by one.
Fuzzing.run { bytes in
    checkRequestLineScan(bytes)
    let limit = HTTPHeadSizeLimit()
    let decoded = decode(bytes, decoder: limit.makeRequestDecoder())
    for head in decoded.heads {
        let outcome = MeshFixture.inspector.inspect(head, now: JWTFixtures.now)
        if case .respond(let response, let entry) = outcome {
            Fuzzing.requireLoggable(entry.reason, "the reason for refusing \(head.method) \(head.uri.debugDescription)")
            Fuzzing.requireLoggable(response.body.trimmingCharacters(in: ["\n"]), "the answer to \(head.method) \(head.uri.debugDescription)")
        }
        guard case .forward(let forwarded, _) = outcome else { continue }
        let path = HTTPPath.normalize(forwarded.uri).map(\.path)
        Fuzzing.require((try? path.get()).map(MeshFixture.mayReachWorkload) == true, "forwarded \(forwarded.method) \(forwarded.uri.debugDescription), which policy denies")
        checkReadBackTheSame(forwarded)
    }
    if let error = decoded.error {
        Fuzzing.requireLoggable(RequestRefusal(decoderError: error, limit: limit).reason, "the reason for refusing \(error)")
    }
}

private struct Decoded {
    var heads: [HTTPRequestHead] = []
    var error: (any Error)?
}

private func decode(_ bytes: [UInt8], decoder: ByteToMessageHandler<HTTPRequestDecoder>) -> Decoded {
    let channel = EmbeddedChannel()
    defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
    var decoded = Decoded()
    do {
        try channel.pipeline.syncOperations.addHandler(decoder)
        try channel.writeInbound(ByteBuffer(bytes: bytes))
    } catch {
        decoded.error = error
    }
    while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
        if case .head(let head) = part { decoded.heads.append(head) }
    }
    return decoded
}

/// What the relay sends for `forwarded` (NIOHTTP1's encoder) is one request
/// that another HTTP/1.1 parser reads exactly as the agent decided it. The
/// encoder owns the framing: it writes Transfer-Encoding as `chunked`, and
/// frames a request that had no framing as chunked (with an empty body), so
/// framing is compared by what it means.
private func checkReadBackTheSame(_ forwarded: HTTPRequestHead) {
    let encoder = EmbeddedChannel(handler: HTTPRequestEncoder())
    defer { _ = try? encoder.finish(acceptAlreadyClosed: true) }
    var wire = ByteBuffer()
    do {
        try encoder.writeOutbound(HTTPClientRequestPart.head(forwarded))
        try encoder.writeOutbound(HTTPClientRequestPart.end(nil))
        while var part = try encoder.readOutbound(as: ByteBuffer.self) {
            wire.writeBuffer(&part)
        }
    } catch {
        Fuzzing.require(false, "the forwarded head \(forwarded) cannot be encoded: \(error)")
    }
    let decoded = decode(Array(wire.readableBytesView), decoder: ByteToMessageHandler(HTTPRequestDecoder()))
    Fuzzing.require(decoded.error == nil && decoded.heads.count == 1, "the forwarded head reads back as \(decoded.heads.count) heads, error \(String(describing: decoded.error)): \(String(buffer: wire).debugDescription)")
    guard let head = decoded.heads.first else { return }
    Fuzzing.require(head.method == forwarded.method && head.uri == forwarded.uri && head.version == forwarded.version, "forwarded \(forwarded), read back \(head)")
    let sent = Fields(forwarded.headers)
    let read = Fields(head.headers)
    Fuzzing.require(read.other == sent.other, "forwarded header fields \(sent.other), read back \(read.other)")
    Fuzzing.require(read.lengths == sent.lengths, "forwarded Content-Length \(sent.lengths), read back \(read.lengths)")
    let chunkedAsSent = sent.encodings.isEmpty && sent.lengths.isEmpty ? [[], ["chunked"]] : [sent.encodings.isEmpty ? [] : ["chunked"]]
    Fuzzing.require(chunkedAsSent.contains(read.encodings), "forwarded Transfer-Encoding \(sent.encodings), read back \(read.encodings)")
}

/// A head's fields as the framing comparison sees them.
private struct Fields {
    var lengths: [String] = []
    /// Transfer-Encoding values, trimmed and lowercased.
    var encodings: [String] = []
    /// Every other field, in order, its name lowercased.
    var other: [[String]] = []

    init(_ headers: HTTPHeaders) {
        for (name, value) in headers {
            switch name.lowercased() {
            case "content-length": lengths.append(value)
            case "transfer-encoding": encodings.append(value.trimmingCharacters(in: [" ", "\t"]).lowercased())
            default: other.append([name.lowercased(), value])
            }
        }
    }
}

/// Bytes at once or one at a time: the first verdict is the same.
private func checkRequestLineScan(_ bytes: [UInt8]) {
    let maximum = HTTPHeadSizeLimit().maximumBytes
    var whole = RequestLineScan(maximumLength: maximum)
    let atOnce = bytes.withUnsafeBytes { whole.next($0) }
    var split = RequestLineScan(maximumLength: maximum)
    var oneByOne = RequestLineScan.Verdict.pass
    for byte in bytes where oneByOne == .pass {
        oneByOne = [byte].withUnsafeBytes { split.next($0) }
    }
    Fuzzing.require(atOnce == oneByOne, "the request-line scan says \(atOnce) for the bytes at once, \(oneByOne) one by one")
}
