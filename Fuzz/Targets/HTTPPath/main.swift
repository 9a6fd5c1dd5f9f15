import FuzzSupport
import Policy

/// A request-target through `HTTPPath.normalize` under every combination of
/// rules. Besides crashes, it looks for targets whose normalized form a
/// workload could still read as another path than the one policy matched.
Fuzzing.run { bytes in
    let target = Fuzzing.text(bytes)
    var results: [HTTPPath.Rules: NormalizedTarget] = [:]
    for normalization in HTTPPath.Rules.Normalization.allCases {
        for parameters in HTTPPath.Rules.Parameters.allCases {
            let rules = HTTPPath.Rules(normalization: normalization, parameters: parameters)
            guard case .success(let normalized) = HTTPPath.normalize(target, rules: rules) else { continue }
            check(normalized, of: target, rules: rules)
            results[rules] = normalized
        }
    }
    checkAgreement(results)
    checkParameterRules(results, target: target)
}

private func check(_ normalized: NormalizedTarget, of target: String, rules: HTTPPath.Rules) {
    let again = HTTPPath.normalize(normalized.target, rules: rules)
    Fuzzing.require(again == .success(normalized), "normalizing \(normalized.target) again under \(rules) gives \(again), not the same")
    guard normalized.form == .origin else {
        Fuzzing.require(target == "*", "asterisk-form from \(target.debugDescription)")
        return
    }
    let path = normalized.path
    Fuzzing.require(path.hasPrefix("/"), "path \(path) does not start with /")
    let segments = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
    Fuzzing.require(!segments.contains { $0 == "." || $0 == ".." }, "path \(path) keeps a dot segment")
    if rules.normalization != .BASE {
        Fuzzing.require(!path.contains("//"), "path \(path) keeps // under \(rules.normalization)")
    }
    if rules.parameters != .keep {
        Fuzzing.require(!path.contains(";"), "path \(path) keeps ; parameters under \(rules.parameters)")
    }
    checkEscapes(path)
    let query = target.firstIndex(of: "?").map { String(target[target.index(after: $0)...]) }
    Fuzzing.require(normalized.query == query, "query \(String(describing: normalized.query)) is not the one sent")
}

/// What is left escaped is escaped in one way only, and is nothing a workload
/// could decode into a separator, a terminator or a dot segment.
private func checkEscapes(_ path: String) {
    let bytes = Array(path.utf8)
    var index = 0
    while index < bytes.count {
        let byte = bytes[index]
        guard byte == UInt8(ascii: "%") else {
            Fuzzing.require(isPathByte(byte), "path \(path) has byte \(byte) that is not a path character")
            index += 1
            continue
        }
        Fuzzing.require(index + 2 < bytes.count, "path \(path) ends in a cut escape")
        let hex = String(decoding: bytes[(index + 1)...(index + 2)], as: UTF8.self)
        Fuzzing.require(hex == hex.uppercased(), "path \(path) has a lowercase escape %\(hex)")
        let value = UInt8(hex, radix: 16)
        Fuzzing.require(value != nil, "path \(path) has a malformed escape %\(hex)")
        if let value {
            Fuzzing.require(![UInt8(ascii: "/"), UInt8(ascii: "\\"), 0].contains(value), "path \(path) keeps an escaped separator %\(hex)")
            Fuzzing.require(!isUnreserved(value), "path \(path) keeps an escaped unreserved character %\(hex)")
        }
        index += 3
    }
}

/// The levels differ only where they say they do: MERGE_SLASHES is BASE with
/// slashes merged, and DECODE_AND_MERGE_SLASHES accepts whatever
/// MERGE_SLASHES accepts, with the same result.
private func checkAgreement(_ results: [HTTPPath.Rules: NormalizedTarget]) {
    for parameters in HTTPPath.Rules.Parameters.allCases {
        let base = results[HTTPPath.Rules(normalization: .BASE, parameters: parameters)]
        let merge = results[HTTPPath.Rules(normalization: .MERGE_SLASHES, parameters: parameters)]
        let decode = results[HTTPPath.Rules(normalization: .DECODE_AND_MERGE_SLASHES, parameters: parameters)]
        Fuzzing.require((base == nil) == (merge == nil), "BASE and MERGE_SLASHES disagree on acceptance: \(String(describing: base)) vs \(String(describing: merge))")
        if let base, let merge, base.form == .origin {
            Fuzzing.require(merged(base.path) == merge.path, "MERGE_SLASHES \(merge.path) is not BASE \(base.path) with slashes merged")
        }
        if let merge {
            Fuzzing.require(decode == merge, "DECODE_AND_MERGE_SLASHES gives \(String(describing: decode)) where MERGE_SLASHES gives \(merge)")
        }
    }
}

/// Without `;` in the path, the parameter rules have nothing to act on and
/// must all give the same result.
private func checkParameterRules(_ results: [HTTPPath.Rules: NormalizedTarget], target: String) {
    guard !target.prefix(while: { $0 != "?" }).contains(";") else { return }
    for normalization in HTTPPath.Rules.Normalization.allCases {
        let keep = results[HTTPPath.Rules(normalization: normalization, parameters: .keep)]
        for parameters in [HTTPPath.Rules.Parameters.strip, .reject] {
            let other = results[HTTPPath.Rules(normalization: normalization, parameters: parameters)]
            Fuzzing.require(other == keep, "without parameters, \(parameters) gives \(String(describing: other)) and keep \(String(describing: keep))")
        }
    }
}

private func merged(_ path: String) -> String {
    var output = ""
    for character in path where !(character == "/" && output.last == "/") {
        output.append(character)
    }
    return output
}

private func isUnreserved(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
        || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || Array("-._~".utf8).contains(byte)
}

private func isPathByte(_ byte: UInt8) -> Bool {
    isUnreserved(byte) || Array("!$&'()*+,;=:@/".utf8).contains(byte)
}
