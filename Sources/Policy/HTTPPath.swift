/// Normalization of an HTTP/1.1 request-target, shared by policy matching and
/// forwarding: the agent forwards the normalized target, so the workload is asked
/// for exactly the path that policy checked.
///
/// It follows Istio's BASE normalization (decode percent escapes of unreserved
/// characters, resolve dot segments, merge slashes) and refuses, rather than
/// guesses at, anything a workload could read as a different path: escaped `/`,
/// `\` and NUL, backslashes, malformed escapes, fragments, characters outside
/// RFC 3986, and dot segments carrying `;` parameters.
public enum HTTPPath {
    /// Longer targets are refused. Common servers stop at 8 KiB too, so a longer one
    /// could not be served anyway.
    public static let maximumTargetLength = 8 * 1024

    /// How far paths are normalized, and what happens to `;` path parameters:
    /// node-wide, from the config's `http:` section.
    public struct Rules: Hashable, Sendable {
        /// Istio's `pathNormalization` levels. Every level decodes escapes of
        /// unreserved characters and resolves dot segments (Istio's BASE).
        public enum Normalization: String, Hashable, Sendable, CaseIterable {
            /// No more: `//admin` stays `//admin`.
            case BASE
            /// Repeated slashes become one (`//admin` is `/admin`).
            case MERGE_SLASHES
            /// Also `%2F` and `%5C` are decoded, as `/`, before merging.
            /// Without it they are refused, never passed on.
            case DECODE_AND_MERGE_SLASHES
        }

        /// `;` parameters in a path segment (`/admin;x=1/panel`). Some
        /// frameworks (Tomcat, Spring, Jetty) drop them before routing, so a
        /// policy that matched the path with them may not be the one that
        /// applies to the resource the workload serves.
        public enum Parameters: String, Hashable, Sendable, CaseIterable {
            /// Matched and forwarded as they are (Istio's behaviour).
            case keep
            /// Removed from every segment; policy and the workload see the
            /// path without them.
            case strip
            /// A path with parameters is refused with 400.
            case reject
        }

        public var normalization: Normalization
        public var parameters: Parameters

        public init(normalization: Normalization = .MERGE_SLASHES, parameters: Parameters = .reject) {
            self.normalization = normalization
            self.parameters = parameters
        }

        /// The defaults: merged slashes, parameters refused.
        public static let standard = Rules()
    }

    /// The normalized form of `target`, or why it is refused.
    ///
    /// Runs in time linear in the length of `target`.
    public static func normalize(
        _ target: some StringProtocol, rules: Rules = .standard, maximumLength: Int = maximumTargetLength
    ) -> Result<NormalizedTarget, HTTPPathError> {
        let bytes = Array(target.utf8)
        guard !bytes.isEmpty else { return .failure(.empty) }
        guard bytes.count <= maximumLength else { return .failure(.tooLong(length: bytes.count, limit: maximumLength)) }
        if bytes == [Byte.asterisk] {
            return .success(NormalizedTarget(form: .asterisk, path: "*", query: nil))
        }
        if let fragment = bytes.firstIndex(of: Byte.hash) {
            return .failure(.fragment(position: fragment))
        }
        guard bytes[0] == Byte.slash else {
            return .failure(hasScheme(bytes) ? .absoluteForm : .notOriginForm)
        }

        let queryStart = bytes.firstIndex(of: Byte.question)
        let pathBytes = bytes[..<(queryStart ?? bytes.endIndex)]
        var query: String?
        if let queryStart {
            let queryBytes = bytes[(queryStart + 1)...]
            if let problem = checkQuery(queryBytes) { return .failure(problem) }
            query = String(decoding: queryBytes, as: UTF8.self)
        }

        if isAlreadyNormal(pathBytes) {
            return .success(NormalizedTarget(form: .origin, path: String(decoding: pathBytes, as: UTF8.self), query: query))
        }
        var decoded: [UInt8]
        switch decodePath(pathBytes, decodingSlashes: rules.normalization == .DECODE_AND_MERGE_SLASHES) {
        case .success(let bytes): decoded = bytes
        case .failure(let problem): return .failure(problem)
        }
        switch rules.parameters {
        case .keep:
            break
        case .strip:
            decoded = stripParameters(decoded)
        case .reject:
            // "..;" has a reason of its own, given by the dot-segment pass.
            if decoded.indices.contains(where: { decoded[$0] == Byte.semicolon && !isDotSegmentWithParameters(decoded, at: $0) }) {
                return .failure(.pathParameters)
            }
        }
        let resolved: [UInt8]
        switch removeDotSegments(decoded) {
        case .success(let bytes): resolved = bytes
        case .failure(let problem): return .failure(problem)
        }
        let merged = rules.normalization == .BASE ? resolved : mergeSlashes(resolved)
        return .success(NormalizedTarget(form: .origin, path: String(decoding: merged, as: UTF8.self), query: query))
    }

    /// Whether a path (starting with `/`) is its own normalization under every
    /// rule: only path characters, no escape, no parameter, no dot segment
    /// and no empty one. Most paths are; the others take the long way, which
    /// also says what is wrong with them.
    private static func isAlreadyNormal(_ path: ArraySlice<UInt8>) -> Bool {
        var previous = Byte.slash
        for byte in path.dropFirst() {
            switch byte {
            case Byte.slash, Byte.dot:
                if previous == Byte.slash { return false }
            case Byte.percent, Byte.semicolon:
                return false
            default:
                if !isPathCharacter(byte) { return false }
            }
            previous = byte
        }
        return true
    }

    /// Percent escapes of unreserved characters decoded, other escapes with their hex
    /// in upper case, every other byte checked against RFC 3986 `pchar` and `/`.
    /// With `decodingSlashes`, `%2F` and `%5C` become `/`.
    private static func decodePath(_ bytes: ArraySlice<UInt8>, decodingSlashes: Bool) -> Result<[UInt8], HTTPPathError> {
        var output: [UInt8] = []
        output.reserveCapacity(bytes.count)
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == Byte.percent {
                guard index + 2 < bytes.endIndex, let high = HTTPSyntax.hexValue(bytes[index + 1]), let low = HTTPSyntax.hexValue(bytes[index + 2]) else {
                    return .failure(.malformedEscape(position: index))
                }
                let value = high << 4 | low
                switch value {
                case Byte.slash where decodingSlashes, Byte.backslash where decodingSlashes:
                    output.append(Byte.slash)
                case Byte.slash, Byte.backslash, 0:
                    // A workload that decodes these would see another path (or the end of
                    // the string) than the one policy matched; no choice is safe but refusal.
                    return .failure(.ambiguousEscape(position: index, decodedByte: value))
                default:
                    if isUnreserved(value) {
                        output.append(value)
                    } else {
                        output.append(contentsOf: [Byte.percent, hexDigits[Int(high)], hexDigits[Int(low)]])
                    }
                }
                index += 3
                continue
            }
            guard byte == Byte.slash || isPathCharacter(byte) else {
                return .failure(.invalidCharacter(position: index, byte: byte, inQuery: false))
            }
            output.append(byte)
            index += 1
        }
        return .success(output)
    }

    /// RFC 3986 §5.2.4 `remove_dot_segments` over an absolute path, done with a stack
    /// of segment ranges so that each byte is visited a bounded number of times.
    /// `..` at the root stays at the root, as the RFC says.
    private static func removeDotSegments(_ path: [UInt8]) -> Result<[UInt8], HTTPPathError> {
        var kept: [Range<Int>] = []
        var start = 1  // after the leading "/"
        while start <= path.count {
            let end = path[start...].firstIndex(of: Byte.slash) ?? path.count
            let isLast = end == path.count
            let segment = path[start..<end]
            if isDotSegment(segment) {
                if segment.count == 2 { _ = kept.popLast() }
                // A dot segment at the end leaves the path ending in "/" ("/a/." is "/a/").
                if isLast { kept.append(end..<end) }
            } else {
                if let semicolon = segment.firstIndex(of: Byte.semicolon), isDotSegment(segment[..<semicolon]) {
                    // Some servers (Tomcat, Jetty) drop path parameters and then treat
                    // "..;x" as "..": the workload would climb where policy did not.
                    return .failure(.dotSegmentWithParameters)
                }
                kept.append(start..<end)
            }
            start = end + 1
        }
        var output: [UInt8] = [Byte.slash]
        output.reserveCapacity(path.count)
        for (number, range) in kept.enumerated() {
            if number > 0 { output.append(Byte.slash) }
            output.append(contentsOf: path[range])
        }
        return .success(output)
    }

    /// Each segment without its `;` parameters: `/a;x/b;y=1` is `/a/b`.
    private static func stripParameters(_ path: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(path.count)
        var inParameters = false
        for byte in path {
            if byte == Byte.slash { inParameters = false }
            if byte == Byte.semicolon { inParameters = true }
            if !inParameters { output.append(byte) }
        }
        return output
    }

    /// Whether the `;` at `index` follows a dot segment (`..;x`), which has an
    /// error of its own.
    private static func isDotSegmentWithParameters(_ path: [UInt8], at index: Int) -> Bool {
        let start = (path[..<index].lastIndex(of: Byte.slash) ?? -1) + 1
        return isDotSegment(path[start..<index])
    }

    private static func isDotSegment(_ segment: ArraySlice<UInt8>) -> Bool {
        (segment.count == 1 || segment.count == 2) && segment.allSatisfy { $0 == Byte.dot }
    }

    private static func mergeSlashes(_ path: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(path.count)
        for byte in path where !(byte == Byte.slash && output.last == Byte.slash) {
            output.append(byte)
        }
        return output
    }

    /// RFC 3986 `query`: `pchar`, `/` and `?`, with well-formed escapes. The query is
    /// forwarded as received, so its escapes are only checked, not rewritten.
    private static func checkQuery(_ bytes: ArraySlice<UInt8>) -> HTTPPathError? {
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let byte = bytes[index]
            if byte == Byte.percent {
                guard index + 2 < bytes.endIndex, HTTPSyntax.hexValue(bytes[index + 1]) != nil, HTTPSyntax.hexValue(bytes[index + 2]) != nil else {
                    return .malformedEscape(position: index)
                }
                index += 3
                continue
            }
            guard byte == Byte.slash || byte == Byte.question || isPathCharacter(byte) else {
                return .invalidCharacter(position: index, byte: byte, inQuery: true)
            }
            index += 1
        }
        return nil
    }

    /// `scheme "://"` at the start, scheme being ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
    /// Only told apart from other forms for a clearer reason: all of them are refused.
    private static func hasScheme(_ bytes: [UInt8]) -> Bool {
        guard let colon = bytes.firstIndex(of: Byte.colon), colon > 0, isAlpha(bytes[0]),
              bytes[(colon + 1)...].starts(with: [Byte.slash, Byte.slash]) else { return false }
        return bytes[1..<colon].allSatisfy { isAlpha($0) || isDigit($0) || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") || $0 == Byte.dot }
    }

    /// RFC 3986 `pchar` without `pct-encoded`: unreserved, sub-delims, ":" and "@".
    private static func isPathCharacter(_ byte: UInt8) -> Bool {
        isUnreserved(byte) || isSubDelimiter(byte) || byte == Byte.colon || byte == UInt8(ascii: "@")
    }

    /// RFC 3986 `sub-delims`: `!$&'()*+,;=`.
    private static func isSubDelimiter(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "!"), UInt8(ascii: "$"), UInt8(ascii: "&")...UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="): true
        default: false
        }
    }

    private static func isUnreserved(_ byte: UInt8) -> Bool {
        isAlpha(byte) || isDigit(byte) || byte == UInt8(ascii: "-") || byte == Byte.dot || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "~")
    }

    private static func isAlpha(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
    }

    private static func isDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
    }

    private static let hexDigits: [UInt8] = Array("0123456789ABCDEF".utf8)

    private enum Byte {
        static let slash = UInt8(ascii: "/")
        static let backslash = UInt8(ascii: "\\")
        static let percent = UInt8(ascii: "%")
        static let question = UInt8(ascii: "?")
        static let hash = UInt8(ascii: "#")
        static let dot = UInt8(ascii: ".")
        static let colon = UInt8(ascii: ":")
        static let semicolon = UInt8(ascii: ";")
        static let asterisk = UInt8(ascii: "*")
    }
}

/// A request-target after `HTTPPath.normalize`.
public struct NormalizedTarget: Hashable, Sendable {
    public enum Form: Hashable, Sendable {
        /// `/path?query`, the form of every request but server-wide OPTIONS.
        case origin
        /// `*`, meaningful only for `OPTIONS * HTTP/1.1`; the caller decides whether the
        /// method allows it. Its `path` is `*`, as Istio and Envoy see it.
        case asterisk
    }

    public let form: Form
    /// What policy matches against: normalized, without the query.
    public let path: String
    /// Everything after the first `?`, exactly as received (checked for RFC 3986
    /// characters and well-formed escapes only); nil when there was no `?`.
    public let query: String?

    public init(form: Form, path: String, query: String?) {
        self.form = form
        self.path = path
        self.query = query
    }

    /// The request-target to forward to the workload.
    public var target: String {
        query.map { "\(path)?\($0)" } ?? path
    }
}

/// Why a request-target was refused. The description is safe to log: it names
/// positions and byte values, never the target's text, which may carry secrets or
/// control bytes.
public enum HTTPPathError: Error, Hashable, Sendable, CustomStringConvertible {
    case empty
    case tooLong(length: Int, limit: Int)
    /// `http://host/path`: only a forward proxy takes it, and the agent is not one.
    case absoluteForm
    /// Neither `/…` nor `*` (authority-form, a relative path, …).
    case notOriginForm
    case fragment(position: Int)
    case invalidCharacter(position: Int, byte: UInt8, inQuery: Bool)
    case malformedEscape(position: Int)
    /// `%2F`, `%5C` or `%00`.
    case ambiguousEscape(position: Int, decodedByte: UInt8)
    /// `..;x` or `.;x`.
    case dotSegmentWithParameters
    /// `;` parameters in a path segment, refused by `pathParameters: reject`.
    case pathParameters

    public var description: String {
        switch self {
        case .empty:
            "request-target is empty"
        case .tooLong(let length, let limit):
            "request-target is \(length) bytes, over the limit of \(limit)"
        case .absoluteForm:
            "request-target is in absolute-form (scheme://…); only origin-form (/path) is accepted"
        case .notOriginForm:
            "request-target does not start with '/'; only origin-form (/path) and '*' are accepted"
        case .fragment(let position):
            "request-target has a fragment ('#' at byte \(position)); clients never send one"
        case .invalidCharacter(let position, let byte, let inQuery):
            "request-target has \(Self.name(of: byte)) at byte \(position), not allowed in a \(inQuery ? "query" : "path") by RFC 3986; percent-encode it"
        case .malformedEscape(let position):
            "request-target has a '%' at byte \(position) not followed by two hex digits"
        case .ambiguousEscape(let position, let decodedByte):
            "request-target has an escaped \(Self.name(of: decodedByte)) at byte \(position), which servers decode differently"
        case .dotSegmentWithParameters:
            "request-target has a dot segment with ';' parameters (\"..;\"), which some servers read as \"..\""
        case .pathParameters:
            "request-target has ';' path parameters, which some frameworks drop before routing; refused (http.pathParameters: reject)"
        }
    }

    private static func name(of byte: UInt8) -> String {
        let hex = "0x" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16, uppercase: true)
        switch byte {
        case UInt8(ascii: " "): return "a space"
        case UInt8(ascii: "\\"): return "a backslash"
        case UInt8(ascii: "/"): return "'/'"
        case 0: return "NUL"
        case 0x21...0x7E: return "'\(Character(Unicode.Scalar(byte)))'"
        case 0x80...: return "non-ASCII byte \(hex)"
        default: return "control byte \(hex)"
        }
    }
}
