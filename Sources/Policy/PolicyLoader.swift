import Foundation

/// The policies read from the policy directory at one time.
public struct PolicySet: Sendable {
    public var peerAuthentication: PeerAuthenticationSet
    /// The files read, in the order they were read.
    public var files: [String]
    /// Documents of kinds this version does not enforce yet (AuthorizationPolicy,
    /// RequestAuthentication, …), by kind.
    public var skippedDocuments: [String: Int]
    /// Policies that were loaded but do not (fully) apply; see
    /// ``PeerAuthenticationSet/warnings``.
    public var warnings: [String]

    public init(peerAuthentication: PeerAuthenticationSet, files: [String] = [], skippedDocuments: [String: Int] = [:]) {
        self.peerAuthentication = peerAuthentication
        self.files = files
        self.skippedDocuments = skippedDocuments
        self.warnings = peerAuthentication.warnings
    }

    /// The inbound mTLS mode of `port` on a workload in `namespace` with `labels`.
    public func mode(namespace: String, labels: [String: String], port: UInt16) -> MTLSMode {
        peerAuthentication.mode(namespace: namespace, labels: labels, port: port)
    }

    /// How many documents were skipped, of every kind.
    public var skippedDocumentCount: Int { skippedDocuments.values.reduce(0, +) }
}

/// The policy directory could not be loaded; nothing of it applies. One entry per
/// document (or file, or directory) that failed, each `file:line: key.path: reason`.
public struct PolicyLoadError: Error, Equatable, CustomStringConvertible {
    public let errors: [YAMLError]

    public init(_ errors: [YAMLError]) {
        self.errors = errors
    }

    public var description: String {
        let count = errors.count == 1 ? "1 error" : "\(errors.count) errors"
        return (["policies not loaded (\(count); the previous policies stay in force):"] + errors.map { "  \($0)" })
            .joined(separator: "\n")
    }
}

/// The contents of one policy file.
public struct PolicyFile: Hashable, Sendable {
    public var peerAuthentications: [PeerAuthentication] = []
    /// Documents of other kinds, by kind.
    public var skippedDocuments: [String: Int] = [:]

    public init(peerAuthentications: [PeerAuthentication] = [], skippedDocuments: [String: Int] = [:]) {
        self.peerAuthentications = peerAuthentications
        self.skippedDocuments = skippedDocuments
    }

    /// Reads every document of a (multi-document) YAML file. Each invalid
    /// PeerAuthentication document adds its first error; documents of other kinds
    /// are counted, not read. Empty documents are ignored.
    public static func parse(_ text: String, file: String) throws(PolicyLoadError) -> PolicyFile {
        let documents: [YAMLNode]
        do {
            documents = try YAMLNode.documents(text, file: file)
        } catch {
            throw PolicyLoadError([yamlError(error, file: file)])
        }
        var result = PolicyFile()
        var errors: [YAMLError] = []
        for document in documents where !document.isNull {
            do {
                var top = try document.mapping()
                let kind = try top.require("kind").nonEmptyString()
                guard kind == PeerAuthentication.kind else {
                    result.skippedDocuments[kind, default: 0] += 1
                    continue
                }
                result.peerAuthentications.append(try PeerAuthentication.parse(document))
            } catch {
                errors.append(yamlError(error, file: file))
            }
        }
        guard errors.isEmpty else { throw PolicyLoadError(errors) }
        return result
    }
}

public enum PolicyLoader {
    /// File names read from the policy directory.
    public static let extensions = [".yaml", ".yml"]

    /// Reads every `*.yaml` and `*.yml` file of `directory` (not its subdirectories
    /// or hidden files), in name order. All or nothing: any error — an unreadable
    /// file, a document that is not valid, the same policy defined twice — throws,
    /// listing every failure. A directory that does not exist holds no policies.
    public static func load(directory: String, rootNamespace: String, defaultMode: MTLSMode) throws(PolicyLoadError) -> PolicySet {
        func failure(_ reason: String) -> PolicyLoadError {
            PolicyLoadError([YAMLError(file: directory, line: nil, keyPath: "", reason: reason)])
        }
        var info = stat()
        guard stat(directory, &info) == 0 else {
            let code = errno
            guard code != ENOENT else {
                return PolicySet(peerAuthentication: PeerAuthenticationSet(rootNamespace: rootNamespace, defaultMode: defaultMode))
            }
            throw failure("cannot read the policy directory: \(String(cString: strerror(code)))")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw failure("the policy directory is not a directory") }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw failure("cannot read the policy directory: \(error.localizedDescription)")
        }
        let files = names.filter { name in !name.hasPrefix(".") && extensions.contains { name.hasSuffix($0) } }
            .sorted()
            .map { (directory as NSString).appendingPathComponent($0) }

        var peerAuthentications: [PeerAuthentication] = []
        var skipped: [String: Int] = [:]
        var errors: [YAMLError] = []
        for path in files {
            let text: String
            do {
                text = try String(contentsOfFile: path, encoding: .utf8)
            } catch {
                errors.append(YAMLError(file: path, line: nil, keyPath: "", reason: "cannot read the policy file: \(error.localizedDescription)"))
                continue
            }
            do {
                let file = try PolicyFile.parse(text, file: path)
                peerAuthentications += file.peerAuthentications
                skipped.merge(file.skippedDocuments, uniquingKeysWith: +)
            } catch {
                errors += error.errors
            }
        }
        errors += duplicates(peerAuthentications)
        guard errors.isEmpty else { throw PolicyLoadError(errors) }
        return PolicySet(
            peerAuthentication: PeerAuthenticationSet(peerAuthentications, rootNamespace: rootNamespace, defaultMode: defaultMode),
            files: files, skippedDocuments: skipped)
    }

    /// A namespace holds one object of a kind by a name, as in Kubernetes.
    static func duplicates(_ policies: [PeerAuthentication]) -> [YAMLError] {
        var first: [String: PeerAuthentication] = [:]
        var errors: [YAMLError] = []
        for policy in policies {
            if let earlier = first[policy.reference] {
                errors.append(
                    YAMLError(
                        file: policy.file, line: policy.line, keyPath: "",
                        reason: "PeerAuthentication \(policy.reference) is already defined at \(earlier.source)"))
            } else {
                first[policy.reference] = policy
            }
        }
        return errors
    }

}

private func yamlError(_ error: Error, file: String) -> YAMLError {
    error as? YAMLError ?? YAMLError(file: file, line: nil, keyPath: "", reason: "\(error)")
}
