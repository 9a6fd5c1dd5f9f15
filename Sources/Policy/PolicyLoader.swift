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

    /// Adds another file's contents (as a directory's files are read together).
    mutating func append(_ other: PolicyFile) {
        peerAuthentications += other.peerAuthentications
        authorizationPolicies += other.authorizationPolicies
        requestAuthentications += other.requestAuthentications
        skippedDocuments.merge(other.skippedDocuments, uniquingKeysWith: +)
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
        let files = policyFiles(in: directory, names: names)
        var contents = PolicyFile()
        var errors: [YAMLError] = []
        for path in files {
            do {
                contents.append(try read(path))
            } catch {
                errors += error.errors
            }
        }
        return try assemble(contents, files: files, errors: errors, rootNamespace: rootNamespace, defaultMode: defaultMode)
    }

    /// Reads one policy file as `load(directory:…)` reads each of its files.
    public static func load(file path: String, rootNamespace: String, defaultMode: MTLSMode) throws(PolicyLoadError) -> PolicySet {
        try assemble(try read(path), files: [path], errors: [], rootNamespace: rootNamespace, defaultMode: defaultMode)
    }

    /// The policy files of a directory, given its entries: `*.yaml` and
    /// `*.yml`, not hidden, in name order.
    private static func policyFiles(in directory: String, names: [String]) -> [String] {
        names.filter { name in !name.hasPrefix(".") && extensions.contains { name.hasSuffix($0) } }
            .sorted()
            .map { (directory as NSString).appendingPathComponent($0) }
    }

    private static func read(_ path: String) throws(PolicyLoadError) -> PolicyFile {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw PolicyLoadError([YAMLError(file: path, line: nil, keyPath: "", reason: "cannot read the policy file: \(error.localizedDescription)")])
        }
        return try PolicyFile.parse(text, file: path)
    }

    /// The checks across files (a policy defined twice, key sets that cannot be
    /// read), then the set; `errors` are those found reading the files.
    private static func assemble(
        _ contents: PolicyFile, files: [String], errors: [YAMLError], rootNamespace: String, defaultMode: MTLSMode
    ) throws(PolicyLoadError) -> PolicySet {
        var errors = errors + duplicates(contents.peerAuthentications) + duplicates(contents.authorizationPolicies)
        let requestAuthentication: RequestAuthenticationSet?
        do {
            // Reads the key sets, and reports RequestAuthentications defined twice.
            requestAuthentication = try RequestAuthenticationSet(contents.requestAuthentications, rootNamespace: rootNamespace)
        } catch {
            errors += error.errors
            requestAuthentication = nil
        }
        guard errors.isEmpty, let requestAuthentication else { throw PolicyLoadError(errors) }
        return PolicySet(
            peerAuthentication: PeerAuthenticationSet(contents.peerAuthentications, rootNamespace: rootNamespace, defaultMode: defaultMode),
            authorization: AuthorizationPolicySet(contents.authorizationPolicies, rootNamespace: rootNamespace),
            requestAuthentication: requestAuthentication, files: files, skippedDocuments: contents.skippedDocuments)
    }

    /// What changes when a policy file is added, removed, replaced or edited:
    /// each file's name, inode, size and modification time. Comparing two
    /// fingerprints costs one `stat` per file, cheap enough to do every second.
    public static func fingerprint(directory: String, extraFiles: [String] = []) -> [String] {
        var stamps: [String] = []
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for path in policyFiles(in: directory, names: names) + extraFiles {
            var info = stat()
            guard stat(path, &info) == 0 else {
                stamps.append("\(path) missing")
                continue
            }
            stamps.append("\(path) \(info.st_ino) \(info.st_size) \(info.st_mtim.tv_sec).\(info.st_mtim.tv_nsec)")
        }
        return stamps
    }

    /// A namespace holds one object of a kind by a name, as in Kubernetes:
    /// every later definition of a `namespace/name` is an error at its place.
    static func duplicates<Object: PolicyObject>(_ objects: [Object]) -> [YAMLError] {
        var first: [String: String] = [:]
        var errors: [YAMLError] = []
        for object in objects {
            if let earlier = first[object.reference] {
                errors.append(YAMLError(file: object.file, line: object.line, keyPath: "", reason: "\(Object.kind) \(object.reference) is already defined at \(earlier)"))
            } else {
                first[object.reference] = object.source
            }
        }
        return errors
    }
}

private func yamlError(_ error: Error, file: String) -> YAMLError {
    error as? YAMLError ?? YAMLError(file: file, line: nil, keyPath: "", reason: "\(error)")
}
