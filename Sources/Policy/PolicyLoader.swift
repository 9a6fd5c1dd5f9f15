import Foundation

/// The policies read from the policy directory at one time.
public struct PolicySet: Sendable {
    public var peerAuthentication: PeerAuthenticationSet
    public var authorization: AuthorizationPolicySet
    public var requestAuthentication: RequestAuthenticationSet
    /// The files read, in the order they were read.
    public var files: [String]
    /// Documents of other kinds (a policy directory may be shared with other
    /// Istio resources), by kind.
    public var skippedDocuments: [String: Int]
    /// Policies that were loaded but do not (fully) apply, or probably do not do
    /// what their author meant.
    public var warnings: [String]

    public init(
        peerAuthentication: PeerAuthenticationSet, authorization: AuthorizationPolicySet? = nil,
        requestAuthentication: RequestAuthenticationSet? = nil, files: [String] = [], skippedDocuments: [String: Int] = [:]
    ) {
        self.peerAuthentication = peerAuthentication
        self.authorization = authorization ?? AuthorizationPolicySet(rootNamespace: peerAuthentication.rootNamespace)
        self.requestAuthentication = requestAuthentication ?? RequestAuthenticationSet(rootNamespace: peerAuthentication.rootNamespace)
        self.files = files
        self.skippedDocuments = skippedDocuments
        self.warnings = peerAuthentication.warnings + self.authorization.warnings + self.requestAuthentication.warnings
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
    public var authorizationPolicies: [AuthorizationPolicy] = []
    public var requestAuthentications: [RequestAuthentication] = []
    /// Documents of other kinds, by kind.
    public var skippedDocuments: [String: Int] = [:]

    public init(
        peerAuthentications: [PeerAuthentication] = [], authorizationPolicies: [AuthorizationPolicy] = [],
        requestAuthentications: [RequestAuthentication] = [], skippedDocuments: [String: Int] = [:]
    ) {
        self.peerAuthentications = peerAuthentications
        self.authorizationPolicies = authorizationPolicies
        self.requestAuthentications = requestAuthentications
        self.skippedDocuments = skippedDocuments
    }

    /// Reads every document of a (multi-document) YAML file. Each invalid
    /// policy document adds its first error; documents of other kinds are
    /// counted, not read. Empty documents are ignored.
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
                switch kind {
                case PeerAuthentication.kind:
                    result.peerAuthentications.append(try PeerAuthentication.parse(document))
                case AuthorizationPolicy.kind:
                    result.authorizationPolicies.append(try AuthorizationPolicy.parse(document))
                case RequestAuthentication.kind:
                    result.requestAuthentications.append(try RequestAuthentication.parse(document))
                default:
                    result.skippedDocuments[kind, default: 0] += 1
                }
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
        var authorizationPolicies: [AuthorizationPolicy] = []
        var requestAuthentications: [RequestAuthentication] = []
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
                authorizationPolicies += file.authorizationPolicies
                requestAuthentications += file.requestAuthentications
                skipped.merge(file.skippedDocuments, uniquingKeysWith: +)
            } catch {
                errors += error.errors
            }
        }
        errors += duplicates(peerAuthentications.map { (PeerAuthentication.kind, $0.reference, $0.file, $0.line) })
        errors += duplicates(authorizationPolicies.map { (AuthorizationPolicy.kind, $0.reference, $0.file, $0.line) })
        let requestAuthentication = keySets(requestAuthentications, rootNamespace: rootNamespace, errors: &errors)
        guard errors.isEmpty, let requestAuthentication else { throw PolicyLoadError(errors) }
        return PolicySet(
            peerAuthentication: PeerAuthenticationSet(peerAuthentications, rootNamespace: rootNamespace, defaultMode: defaultMode),
            authorization: AuthorizationPolicySet(authorizationPolicies, rootNamespace: rootNamespace),
            requestAuthentication: requestAuthentication, files: files, skippedDocuments: skipped)
    }

    /// Reads one policy file as `load(directory:…)` reads each of its files.
    public static func load(file path: String, rootNamespace: String, defaultMode: MTLSMode) throws(PolicyLoadError) -> PolicySet {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw PolicyLoadError([YAMLError(file: path, line: nil, keyPath: "", reason: "cannot read the policy file: \(error.localizedDescription)")])
        }
        let file = try PolicyFile.parse(text, file: path)
        var errors = duplicates(file.peerAuthentications.map { (PeerAuthentication.kind, $0.reference, $0.file, $0.line) })
        errors += duplicates(file.authorizationPolicies.map { (AuthorizationPolicy.kind, $0.reference, $0.file, $0.line) })
        let requestAuthentication = keySets(file.requestAuthentications, rootNamespace: rootNamespace, errors: &errors)
        guard errors.isEmpty, let requestAuthentication else { throw PolicyLoadError(errors) }
        return PolicySet(
            peerAuthentication: PeerAuthenticationSet(file.peerAuthentications, rootNamespace: rootNamespace, defaultMode: defaultMode),
            authorization: AuthorizationPolicySet(file.authorizationPolicies, rootNamespace: rootNamespace),
            requestAuthentication: requestAuthentication, files: [path], skippedDocuments: file.skippedDocuments)
    }

    /// The RequestAuthentications with their key sets read (inline or from
    /// `jwksUri` files); nil, with the reasons added to `errors`, when any fails.
    private static func keySets(_ policies: [RequestAuthentication], rootNamespace: String, errors: inout [YAMLError]) -> RequestAuthenticationSet? {
        do {
            return try RequestAuthenticationSet(policies, rootNamespace: rootNamespace)
        } catch {
            errors += error.errors
            return nil
        }
    }

    /// What changes when a policy file is added, removed, replaced or edited:
    /// each file's name, inode, size and modification time. Comparing two
    /// fingerprints costs one `stat` per file, cheap enough to do every second.
    public static func fingerprint(directory: String, extraFiles: [String] = []) -> [String] {
        var stamps: [String] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let paths = names.filter { name in !name.hasPrefix(".") && extensions.contains { name.hasSuffix($0) } }.sorted()
            .map { (directory as NSString).appendingPathComponent($0) } + extraFiles
        for path in paths {
            var info = stat()
            guard stat(path, &info) == 0 else {
                stamps.append("\(path) missing")
                continue
            }
            stamps.append("\(path) \(info.st_ino) \(info.st_size) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)")
        }
        return stamps
    }

    /// A namespace holds one object of a kind by a name, as in Kubernetes.
    static func duplicates(_ objects: [(kind: String, reference: String, file: String, line: Int?)]) -> [YAMLError] {
        var first: [String: String] = [:]
        var errors: [YAMLError] = []
        for object in objects {
            let source = object.line.map { "\(object.file):\($0)" } ?? object.file
            if let earlier = first[object.reference] {
                errors.append(YAMLError(file: object.file, line: object.line, keyPath: "", reason: "\(object.kind) \(object.reference) is already defined at \(earlier)"))
            } else {
                first[object.reference] = source
            }
        }
        return errors
    }

}

private func yamlError(_ error: Error, file: String) -> YAMLError {
    error as? YAMLError ?? YAMLError(file: file, line: nil, keyPath: "", reason: "\(error)")
}
