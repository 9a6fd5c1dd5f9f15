/// Turns request paths into templates: a segment that names one object among
/// many (a number, a UUID, a hex id, a long opaque token) becomes `{id}`, so a
/// million `/orders/N` requests are one edge, not a million. Every other
/// segment is kept as it is: words are the API's shape, and generalizing them
/// would let a suggested policy allow paths nobody used.
public enum PathTemplate {
    public static let variable = "{id}"
    /// What stands for the rest of a path cut short, or for a segment that
    /// cannot be kept (too long, or holding `*`, which policy reads as a
    /// wildcard).
    public static let elided = "{…}"
    /// Segments kept, and bytes of template; a longer path ends in `/{…}` so
    /// one client cannot make the key of an edge (in memory and on disk)
    /// arbitrarily long.
    public static let maximumSegments = 32
    public static let maximumSegmentLength = 128
    public static let maximumLength = 256

    public static func generalize(_ path: String) -> String {
        var bytes = path
        return bytes.withUTF8 { generalize(bytes: $0) } ?? path
    }

    /// The template of `bytes`, or nil when it is `bytes` unchanged (most
    /// paths: then no new string is made). One pass over the bytes; a
    /// request's edge costs this per request.
    private static func generalize(bytes: UnsafeBufferPointer<UInt8>) -> String? {
        // The query and fragment are not part of what policy matches.
        let end = bytes.firstIndex { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? bytes.endIndex
        guard end > 0 else { return "/" }
        var out: [UInt8]?
        var written = 0  // bytes of `bytes` already accounted for in `out`
        var segmentStart = 0
        var index = 0
        var count = 0
        while segmentStart <= end {
            var segmentEnd = segmentStart
            while segmentEnd < end, bytes[segmentEnd] != UInt8(ascii: "/") { segmentEnd += 1 }
            let segment = UnsafeBufferPointer(rebasing: bytes[segmentStart..<segmentEnd])
            let replacement: String? =
                isVariable(segment) ? variable : segment.count > maximumSegmentLength || segment.contains(UInt8(ascii: "*")) ? elided : nil
            let keptLength = replacement?.utf8.count ?? segment.count
            count += keptLength + 1
            if index == maximumSegments || count > maximumLength {
                var cut = out ?? Array(bytes[0..<segmentStart])
                if out != nil { cut.append(contentsOf: bytes[written..<segmentStart]) }
                cut.append(contentsOf: elided.utf8)
                return String(decoding: cut, as: UTF8.self)
            }
            if let replacement {
                if out == nil { out = [] }
                out?.append(contentsOf: bytes[written..<segmentStart])
                out?.append(contentsOf: replacement.utf8)
                written = segmentEnd
            }
            index += 1
            segmentStart = segmentEnd + 1
        }
        if var out {
            out.append(contentsOf: bytes[written..<end])
            return String(decoding: out, as: UTF8.self)
        }
        return end == bytes.count ? nil : String(decoding: bytes[0..<end], as: UTF8.self)
    }

    /// Whether a segment looks like an identifier rather than a name.
    public static func isVariable(_ segment: Substring) -> Bool {
        var segment = segment
        return segment.withUTF8 { isVariable($0) }
    }

    private static func isVariable(_ segment: UnsafeBufferPointer<UInt8>) -> Bool {
        guard !segment.isEmpty else { return false }
        var allDigits = true
        var allHex = true
        var allToken = true
        var hasDigit = false
        var hasLetter = false
        for byte in segment {
            let digit = isDigit(byte)
            hasDigit = hasDigit || digit
            hasLetter = hasLetter || isLetter(byte)
            allDigits = allDigits && digit
            allHex = allHex && isHex(byte)
            allToken = allToken && isTokenByte(byte)
        }
        if allDigits { return true }
        if isUUID(segment) { return true }
        // Hex ids (hashes, object ids): long enough not to be a word, and with a
        // digit, since "deadbeef" or "facade" may well be words.
        if segment.count >= 8, hasDigit, allHex { return true }
        // Opaque tokens (base64url, ULIDs, session keys): long, letters and digits mixed.
        if segment.count >= 20, hasDigit, hasLetter, allToken { return true }
        return false
    }

    /// 8-4-4-4-12 hexadecimal digits.
    private static func isUUID(_ segment: UnsafeBufferPointer<UInt8>) -> Bool {
        guard segment.count == 36 else { return false }
        for (offset, byte) in segment.enumerated() {
            if offset == 8 || offset == 13 || offset == 18 || offset == 23 {
                guard byte == UInt8(ascii: "-") else { return false }
            } else if !isHex(byte) {
                return false
            }
        }
        return true
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= 0x30 && byte <= 0x39 }
    private static func isLetter(_ byte: UInt8) -> Bool { (byte | 0x20) >= 0x61 && (byte | 0x20) <= 0x7a }
    private static func isHex(_ byte: UInt8) -> Bool { isDigit(byte) || ((byte | 0x20) >= 0x61 && (byte | 0x20) <= 0x66) }
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        isDigit(byte) || isLetter(byte) || byte == UInt8(ascii: "-") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "=") || byte == UInt8(ascii: "~")
    }
}

/// The `paths` a suggested policy allows for a set of observed templates
/// (docs/journey.md says the same rule in words):
/// - a template without a variable is allowed exactly;
/// - a template with a variable is allowed as the prefix up to its first
///   variable segment (`/orders/{id}/items` → `/orders/*`), since Istio matches
///   paths exactly, by prefix or by suffix only;
/// - `siblingThreshold` or more exact paths under one parent other than `/`
///   become `PARENT/*` (static assets, many named reports): the observations
///   show the parent is a collection;
/// - nothing is ever generalized to `/*`: `/admin` beside `/api/*` stays
///   `/admin`. A template whose first segment varies (`/{id}`), or that is no
///   origin-form path at all (`OPTIONS *`), cannot be allowed without allowing
///   every path: it is left out and named in `unexpressed`.
public enum PolicyPaths {
    public static let siblingThreshold = 8

    public struct Allowed: Equatable, Sendable {
        public var paths: [String]
        /// Observed templates no path rule allows (see above).
        public var unexpressed: [String]
    }

    public static func paths(for templates: some Sequence<String>) -> Allowed {
        var prefixes = Set<String>()
        var exact = Set<String>()
        var unexpressed = Set<String>()
        for template in templates {
            let segments = template.split(separator: "/", omittingEmptySubsequences: false)
            guard template.hasPrefix("/") else {
                unexpressed.insert(template)
                continue
            }
            if let first = segments.firstIndex(where: { $0 == PathTemplate.variable || $0 == PathTemplate.elided }) {
                // Index 0 is the empty segment before the leading slash.
                guard first > 1 else {
                    unexpressed.insert(template)
                    continue
                }
                prefixes.insert(segments[..<first].joined(separator: "/") + "/*")
            } else {
                exact.insert(template)
            }
        }
        var byParent: [String: [String]] = [:]
        for path in exact {
            guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { continue }
            byParent[String(path[...slash]), default: []].append(path)
        }
        for (parent, children) in byParent where children.count >= siblingThreshold {
            prefixes.insert(parent + "*")
        }
        // An exact path a prefix already allows is not written twice.
        exact = exact.filter { path in !prefixes.contains { path.hasPrefix(String($0.dropLast())) } }
        // A prefix inside a shorter one is redundant too.
        prefixes = prefixes.filter { prefix in
            !prefixes.contains { other in other != prefix && prefix.hasPrefix(String(other.dropLast())) }
        }
        return Allowed(paths: exact.sorted() + prefixes.sorted(), unexpressed: unexpressed.sorted())
    }
}
