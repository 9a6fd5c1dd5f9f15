/// The shapes of the names the CNI spec, Linux and Kubernetes allow, checked
/// where they enter: the plugin's environment and the agent's socket. Each
/// check returns nil when the name is fine, or says what is wrong with it.
public enum Names {
    /// Longer than any runtime's ids (containerd and CRI-O use 64 hex digits);
    /// bounds what one request can make the agent hold and log.
    public static let maximumContainerIDLength = 256
    public static let maximumPathLength = 4095
    /// `sun_path` holds 108 bytes, the last one the terminating NUL.
    public static let maximumSocketPathLength = 107

    /// The spec: not empty, an alphanumeric first character, then
    /// alphanumerics, `_`, `.` or `-`.
    public static func containerIDProblem(_ id: String) -> String? {
        specNameProblem(id, maximumLength: maximumContainerIDLength)
    }

    /// A network's `name`, by the same rule as a container id.
    public static func networkNameProblem(_ name: String) -> String? {
        specNameProblem(name, maximumLength: 256)
    }

    /// Linux's rule for an interface name (`dev_valid_name`): 1 to 15 bytes,
    /// not `.` or `..`, no `/`, `:` or whitespace.
    public static func interfaceNameProblem(_ name: String) -> String? {
        let bytes = Array(name.utf8)
        if bytes.isEmpty { return "it is empty" }
        if bytes.count > 15 { return "it is \(bytes.count) bytes long; Linux allows at most 15" }
        if name == "." || name == ".." { return "it is \(name.debugDescription)" }
        if let bad = bytes.first(where: { $0 == 0x2F || $0 == 0x3A || $0 <= 0x20 || $0 == 0x7F }) {
            return "it contains \(describe(byte: bad)), which Linux does not allow in an interface name"
        }
        return nil
    }

    /// A path to a network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
    public static func namespacePathProblem(_ path: String) -> String? {
        absolutePathProblem(path, maximumLength: maximumPathLength)
    }

    /// A file or directory the installer writes in (`/opt/cni/bin`, `/etc/cni/net.d`).
    public static func filePathProblem(_ path: String) -> String? {
        absolutePathProblem(path, maximumLength: maximumPathLength)
    }

    /// The agent's socket, as `connect(2)` takes it.
    public static func socketPathProblem(_ path: String) -> String? {
        absolutePathProblem(path, maximumLength: maximumSocketPathLength)
    }

    /// A Kubernetes namespace: an RFC 1123 label (lower-case alphanumerics and
    /// `-`, at most 63, alphanumeric at both ends).
    public static func kubernetesNamespaceProblem(_ name: String) -> String? {
        dnsLabelProblem(name)
    }

    /// A Kubernetes pod name: an RFC 1123 subdomain (labels joined by `.`, at most 253).
    public static func kubernetesNameProblem(_ name: String) -> String? {
        let bytes = name.utf8.count
        if bytes == 0 { return "it is empty" }
        if bytes > 253 { return "it is \(bytes) bytes long; Kubernetes allows at most 253" }
        for label in name.split(separator: ".", omittingEmptySubsequences: false) {
            if let problem = dnsLabelProblem(String(label)) { return problem }
        }
        return nil
    }

    /// A pod UID: Kubernetes makes RFC 4122 UUIDs; any runtime's is letters,
    /// digits and `-`.
    public static func kubernetesUIDProblem(_ uid: String) -> String? {
        let bytes = Array(uid.utf8)
        if bytes.isEmpty { return "it is empty" }
        if bytes.count > 128 { return "it is \(bytes.count) bytes long; a UID has at most 128" }
        if let bad = bytes.first(where: { !isAlphanumeric($0) && $0 != 0x2D }) {
            return "it contains \(describe(byte: bad)); a UID has only letters, digits and -"
        }
        return nil
    }

    private static func specNameProblem(_ name: String, maximumLength: Int) -> String? {
        let bytes = Array(name.utf8)
        guard let first = bytes.first else { return "it is empty" }
        if bytes.count > maximumLength { return "it is \(bytes.count) bytes long; at most \(maximumLength) are allowed" }
        if !isAlphanumeric(first) { return "it starts with \(describe(byte: first)), not a letter or digit" }
        if let bad = bytes.first(where: { !isAlphanumeric($0) && $0 != 0x5F && $0 != 0x2E && $0 != 0x2D }) {
            return "it contains \(describe(byte: bad)); only letters, digits, _, . and - are allowed"
        }
        return nil
    }

    private static func dnsLabelProblem(_ label: String) -> String? {
        let bytes = Array(label.utf8)
        guard let first = bytes.first, let last = bytes.last else { return "it has an empty label" }
        if bytes.count > 63 { return "it has a label of \(bytes.count) bytes; at most 63 are allowed" }
        let allowed: (UInt8) -> Bool = { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D }
        if let bad = bytes.first(where: { !allowed($0) }) {
            return "it contains \(describe(byte: bad)); only lower-case letters, digits and - are allowed"
        }
        if first == 0x2D || last == 0x2D { return "a label starts or ends with -" }
        return nil
    }

    private static func absolutePathProblem(_ path: String, maximumLength: Int) -> String? {
        let bytes = Array(path.utf8)
        if bytes.first != 0x2F { return "it is not an absolute path" }
        if bytes.count > maximumLength { return "it is \(bytes.count) bytes long; at most \(maximumLength) are allowed" }
        if let bad = bytes.first(where: { $0 < 0x20 || $0 == 0x7F }) { return "it contains \(describe(byte: bad))" }
        return nil
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
    }

    private static func describe(byte: UInt8) -> String {
        switch byte {
        case 0x20: return "a space"
        case 0x21...0x7E: return "\"\(Character(Unicode.Scalar(byte)))\""
        default: return "the byte 0x\(String(byte, radix: 16))"
        }
    }
}

/// IP addresses as text, checked without the C library so that the pure
/// codec needs none: dotted-quad IPv4 and RFC 4291 IPv6 (with `::` and an
/// embedded IPv4 tail), no zone, no prefix.
public enum IPAddressText {
    public static func isValid(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= 45 else { return false }
        return bytes.contains(0x3A) ? isIPv6(bytes[...]) : isIPv4(bytes[...])
    }

    /// `10.1.0.5/16` → `10.1.0.5`; nil unless it is an address and a prefix
    /// length that fits it.
    public static func addressOfCIDR(_ text: String) -> String? {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, isValid(String(parts[0])) else { return nil }
        let length = parts[1]
        guard (1...3).contains(length.utf8.count), length.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let bits = Int(length) else {
            return nil
        }
        guard bits <= (parts[0].contains(":") ? 128 : 32) else { return nil }
        return String(parts[0])
    }

    static func isIPv4(_ bytes: ArraySlice<UInt8>) -> Bool {
        let parts = bytes.split(separator: 0x2E, omittingEmptySubsequences: false)
        guard parts.count == 4 else { return false }
        for part in parts {
            guard (1...3).contains(part.count), part.allSatisfy({ (0x30...0x39).contains($0) }) else { return false }
            // No leading zero: `010` is octal to some parsers and decimal to others.
            if part.count > 1 && part.first == 0x30 { return false }
            let value = part.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            if value > 255 { return false }
        }
        return true
    }

    static func isIPv6(_ bytes: ArraySlice<UInt8>) -> Bool {
        let text = Array(bytes)
        // At most one `::`, standing for one or more zero groups (`:::` has two).
        var compressed: Int?
        for index in text.indices.dropLast() where text[index] == 0x3A && text[index + 1] == 0x3A {
            guard compressed == nil else { return false }
            compressed = index
        }
        guard let at = compressed else {
            return groupCount(text[...], ipv4Tail: true) == 8
        }
        guard let head = groupCount(text[..<at], ipv4Tail: false), let tail = groupCount(text[(at + 2)...], ipv4Tail: true) else {
            return false
        }
        return head + tail <= 7
    }

    /// How many 16-bit groups `part` (colon-separated, no `::`) holds; an
    /// IPv4 tail counts as two. Nil for an empty or malformed group.
    private static func groupCount(_ part: ArraySlice<UInt8>, ipv4Tail: Bool) -> Int? {
        if part.isEmpty { return 0 }
        let hex: (UInt8) -> Bool = { (0x30...0x39).contains($0) || (0x41...0x46).contains($0) || (0x61...0x66).contains($0) }
        let groups = part.split(separator: 0x3A, omittingEmptySubsequences: false)
        var count = 0
        for (index, group) in groups.enumerated() {
            if ipv4Tail && index == groups.count - 1 && group.contains(0x2E) {
                guard isIPv4(group) else { return nil }
                count += 2
            } else {
                guard (1...4).contains(group.count), group.allSatisfy(hex) else { return nil }
                count += 1
            }
        }
        return count
    }
}
