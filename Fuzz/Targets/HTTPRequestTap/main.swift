import FuzzSupport
import Proxy

/// A spliced connection's client bytes through `HTTPRequestFraming`, the
/// reader `graph.http` watches request heads with: it reads what any client
/// sends, so besides crashes it looks for answers that depend on how the
/// bytes were cut into reads (the same stream in one read, in reads cut where
/// the input's first byte says, and byte by byte must find the same heads and
/// stop at the same point), and for heads that are not heads.
Fuzzing.run { bytes in
    let whole = Fuzzing.requireSameReading(of: bytes, frame)
    for head in whole.heads {
        Fuzzing.require(!head.method.isEmpty && !head.method.contains(" ") && !head.target.isEmpty && !head.target.contains(" "),
                        "\(head) is not a request line's method and target")
    }
    // A head is at least "M T HTTP/1.1" and a blank line.
    Fuzzing.require(whole.heads.count <= bytes.count / 14 + 1, "\(whole.heads.count) heads in \(bytes.count) bytes")
}

private struct Framed: Equatable, CustomStringConvertible {
    var heads: [HTTPRequestFraming.Head] = []
    var stopped = false

    var description: String { "\(heads.map { "\($0.method) \($0.target)" }), stopped: \(stopped)" }
}

private func frame(_ reads: [[UInt8]]) -> Framed {
    var framing = HTTPRequestFraming(maximumHeadBytes: 4096)
    var framed = Framed()
    for read in reads {
        read.withUnsafeBytes { framing.read($0) { framed.heads.append($0) } }
    }
    framed.stopped = framing.isStopped
    return framed
}
