import Glibc
import TLS

/// A problem with one of the CA's files, naming the file.
public struct CAFileError: Error, Equatable, CustomStringConvertible {
    public let path: String
    public let problem: String

    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }

    public var description: String { "\(path): \(problem)" }
}

/// The files of mesh-agent's local PKI, as `agentctl ca` makes them:
///
/// - `agentctl ca init --trust-domain TD --out DIR` → `DIR/root.pem` (0644) and
///   `DIR/root.key` (0600): the offline root.
/// - `agentctl ca issue-intermediate --ca DIR --name NODE --out DIR2` →
///   `DIR2/intermediate.pem` (0644), `DIR2/intermediate.key` (0600) and
///   `DIR2/bundle.pem` (0644, the root certificates): what a node's agent needs.
///
/// Existing files are never overwritten. Keys are created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600 before a byte is written.
public enum CAFiles {
    public static let rootCertificateName = "root.pem"
    public static let rootKeyName = "root.key"
    public static let intermediateCertificateName = "intermediate.pem"
    public static let intermediateKeyName = "intermediate.key"
    public static let bundleName = "bundle.pem"

    /// What was made.
    public struct Written: Sendable {
        /// Paths in the order they were written.
        public let files: [String]
        public let certificate: Certificate
        /// The trust domain the CA is for.
        public let trustDomain: String
    }

    /// Makes a new root CA key (P-256) and self-signed certificate in `directory`
    /// (created with mode 0700 when missing; parents 0755).
    public static func initRoot(
        trustDomain: String, directory: String, lifetime: Duration = CertificateBuilder.defaultRootLifetime
    ) throws -> Written {
        try SpiffeID.validateTrustDomain(trustDomain)
        _ = try CertificateBuilder.lifetimeSeconds(lifetime)
        let certificatePath = join(directory, rootCertificateName)
        let keyPath = join(directory, rootKeyName)
        try makeDirectory(directory, mode: 0o700)
        try refuseExisting([certificatePath, keyPath])

        let key = try PrivateKey.generateP256()
        let root = try CertificateBuilder.makeRoot(trustDomain: trustDomain, key: key, lifetime: lifetime)
        try writeAll([
            (keyPath, try key.pemRepresentation(), 0o600),
            (certificatePath, try root.pemRepresentation(), 0o644),
        ])
        return Written(files: [keyPath, certificatePath], certificate: root, trustDomain: trustDomain)
    }

    /// Makes a node intermediate CA signed by the root in `caDirectory`
    /// (`root.pem`, `root.key`), writing it to `outDirectory` (created with mode
    /// 0755 when missing) with the trust bundle. The trust domain is the root's
    /// `O=` unless given. When `root.pem` holds several roots (during a root
    /// rotation), the one matching `root.key` signs and all go into `bundle.pem`.
    public static func issueIntermediate(
        caDirectory: String, nodeName: String, outDirectory: String, trustDomain: String? = nil,
        lifetime: Duration = CertificateBuilder.defaultIntermediateLifetime
    ) throws -> Written {
        try CertificateBuilder.validateNodeName(nodeName)
        _ = try CertificateBuilder.lifetimeSeconds(lifetime)
        var isDirectory = stat()
        guard stat(caDirectory, &isDirectory) == 0 else {
            throw CAFileError(path: caDirectory, problem: "cannot open the CA directory: \(errnoText()) (make one with agentctl ca init)")
        }
        guard (isDirectory.st_mode & S_IFMT) == S_IFDIR else {
            throw CAFileError(path: caDirectory, problem: "not a directory")
        }
        let rootCertificatePath = join(caDirectory, rootCertificateName)
        let rootKeyPath = join(caDirectory, rootKeyName)
        let roots = try readCertificates(path: rootCertificatePath)
        let rootKey = try readPrivateKey(path: rootKeyPath)
        guard let signer = roots.first(where: { $0.publicKeyMatches(rootKey) }) else {
            throw CAFileError(path: rootKeyPath, problem: "is not the private key of any certificate in \(rootCertificatePath)")
        }
        let bundle: TrustBundle
        do {
            bundle = try TrustBundle(roots: roots)
        } catch {
            throw CAFileError(path: rootCertificatePath, problem: "\(error)")
        }
        let authority: CertificateAuthority
        do {
            authority = try CertificateAuthority(certificate: signer, key: rootKey)
        } catch {
            throw CAFileError(path: rootCertificatePath, problem: "\(error)")
        }
        let domain: String
        if let trustDomain {
            domain = trustDomain
        } else if let organization = signer.subjectOrganization {
            domain = organization
        } else {
            throw CAFileError(path: rootCertificatePath, problem: "the root's subject has no O= naming the trust domain; pass the trust domain explicitly")
        }
        do {
            try SpiffeID.validateTrustDomain(domain)
        } catch {
            throw CAFileError(path: rootCertificatePath, problem: "the root's trust domain is unusable: \(error)")
        }

        let certificatePath = join(outDirectory, intermediateCertificateName)
        let keyPath = join(outDirectory, intermediateKeyName)
        let bundlePath = join(outDirectory, bundleName)
        try makeDirectory(outDirectory, mode: 0o755)
        try refuseExisting([certificatePath, keyPath, bundlePath])

        let key = try PrivateKey.generateP256()
        let intermediate = try CertificateBuilder.makeIntermediate(
            nodeName: nodeName, trustDomain: domain, key: key, issuer: authority, lifetime: lifetime)
        try writeAll([
            (keyPath, try key.pemRepresentation(), 0o600),
            (certificatePath, try intermediate.pemRepresentation(), 0o644),
            (bundlePath, try bundle.pemRepresentation(), 0o644),
        ])
        return Written(files: [keyPath, certificatePath, bundlePath], certificate: intermediate, trustDomain: domain)
    }

    /// Reads a trust bundle file (PEM roots).
    public static func loadTrustBundle(path: String) throws -> TrustBundle {
        let text = try readFile(path: path, what: "trust bundle")
        do {
            return try TrustBundle(pem: text)
        } catch {
            throw CAFileError(path: path, problem: "\(error)")
        }
    }

    // MARK: - Reading

    /// Every certificate in a PEM file; a clear error naming the file when it is
    /// missing, empty, truncated or not PEM.
    public static func readCertificates(path: String) throws -> [Certificate] {
        let text = try readFile(path: path, what: "certificate")
        do {
            return try Certificate.chain(fromPEM: text)
        } catch let error as OpenSSLError {
            let detail = error.details.isEmpty ? "" : " (\(error.details.joined(separator: "; ")))"
            throw CAFileError(path: path, problem: "is not a readable PEM certificate: it is damaged, truncated or not a certificate\(detail)")
        }
    }

    /// A private key file, which must be a regular file of mode 0600 or stricter
    /// (no group or other bits) owned by root or the running user.
    public static func readPrivateKey(path: String) throws -> PrivateKey {
        let text = try readFile(path: path, what: "private key") { info in
            let mode = info.st_mode & 0o7777
            if mode & 0o077 != 0 {
                throw CAFileError(path: path, problem: "the private key is accessible to other users (mode \(octal(mode))); run: chmod 600 \(path)")
            }
            let owner = info.st_uid
            if owner != 0 && owner != geteuid() {
                throw CAFileError(path: path, problem: "the private key is owned by uid \(owner), not by root or this user (uid \(geteuid())); run: chown \(geteuid()) \(path)")
            }
        }
        if text.contains("ENCRYPTED") {
            throw CAFileError(path: path, problem: "the private key is encrypted; mesh-agent needs an unencrypted PEM key (mode 0600)")
        }
        do {
            return try PrivateKey(pem: text)
        } catch let error as OpenSSLError {
            let detail = error.details.isEmpty ? "" : " (\(error.details.joined(separator: "; ")))"
            throw CAFileError(path: path, problem: "is not a readable PEM private key: it is damaged, truncated or not a key\(detail)")
        }
    }

    static let maximumFileSize = 1 << 20

    static func readFile(path: String, what: String, check: (stat) throws -> Void = { _ in }) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CAFileError(path: path, problem: "cannot open the \(what) file: \(errnoText())")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw CAFileError(path: path, problem: "cannot stat the \(what) file: \(errnoText())")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw CAFileError(path: path, problem: "the \(what) file is not a regular file")
        }
        try check(info)
        guard info.st_size <= maximumFileSize else {
            throw CAFileError(path: path, problem: "the \(what) file is larger than \(maximumFileSize) bytes")
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw CAFileError(path: path, problem: "cannot read the \(what) file: \(errnoText())")
            }
            if count == 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
            guard bytes.count <= maximumFileSize else {
                throw CAFileError(path: path, problem: "the \(what) file is larger than \(maximumFileSize) bytes")
            }
        }
        guard !bytes.isEmpty else {
            throw CAFileError(path: path, problem: "the \(what) file is empty")
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    // MARK: - Writing

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    /// `mkdir -p`: the last component gets `mode`, missing parents 0755. An existing
    /// directory is left as it is.
    static func makeDirectory(_ path: String, mode: mode_t) throws {
        var info = stat()
        if stat(path, &info) == 0 {
            guard (info.st_mode & S_IFMT) == S_IFDIR else {
                throw CAFileError(path: path, problem: "exists and is not a directory")
            }
            return
        }
        let parent = parentDirectory(of: path)
        if let parent { try makeDirectory(parent, mode: 0o755) }
        if mkdir(path, mode) == 0 {
            // mkdir's mode passes through the umask; make it exactly what was asked.
            _ = chmod(path, mode)
        } else if errno != EEXIST {
            throw CAFileError(path: path, problem: "cannot create the directory: \(errnoText())")
        }
    }

    private static func parentDirectory(of path: String) -> String? {
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        guard let slash = trimmed.lastIndex(of: "/") else { return nil }
        let parent = trimmed[..<slash]
        return parent.isEmpty ? nil : String(parent)
    }

    static func refuseExisting(_ paths: [String]) throws {
        for path in paths {
            var info = stat()
            if lstat(path, &info) == 0 {
                throw CAFileError(path: path, problem: "already exists; refusing to overwrite it (move it away or choose another --out directory)")
            }
        }
    }

    /// Writes each file new (never replacing one); when any fails, removes the ones
    /// this call created, so nothing is left half-made.
    static func writeAll(_ files: [(path: String, contents: String, mode: mode_t)]) throws {
        var created: [String] = []
        do {
            for file in files {
                try createFile(path: file.path, contents: file.contents, mode: file.mode)
                created.append(file.path)
            }
        } catch {
            for path in created { unlink(path) }
            throw error
        }
    }

    /// Creates `path` (which must not exist) with exactly `mode` before any byte is
    /// written, writes `contents` and syncs it.
    static func createFile(path: String, contents: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
        guard fd >= 0 else {
            if errno == EEXIST {
                throw CAFileError(path: path, problem: "already exists; refusing to overwrite it")
            }
            throw CAFileError(path: path, problem: "cannot create the file: \(errnoText())")
        }
        var ok = false
        defer {
            close(fd)
            if !ok { unlink(path) }
        }
        // The umask may have taken bits away (never added any): set the exact mode
        // while the file is still empty.
        guard fchmod(fd, mode) == 0 else {
            throw CAFileError(path: path, problem: "cannot set the file's mode: \(errnoText())")
        }
        let bytes = Array(contents.utf8)
        var offset = 0
        while offset < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 {
                if errno == EINTR { continue }
                throw CAFileError(path: path, problem: "cannot write the file: \(errnoText())")
            }
            offset += count
        }
        guard fsync(fd) == 0 else {
            throw CAFileError(path: path, problem: "cannot sync the file: \(errnoText())")
        }
        ok = true
    }
}

func errnoText() -> String {
    String(cString: strerror(errno))
}

func octal(_ mode: mode_t) -> String {
    let digits = String(mode, radix: 8)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}
