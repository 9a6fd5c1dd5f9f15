import Foundation
import NIOCore
@testable import TLS

/// Test certificates made with the `openssl` command line tool, not with our own
/// builder, so the handshake tests do not only check us against ourselves. In a
/// temporary directory (the interop tests hand the files to `openssl s_server` /
/// `s_client`):
///
/// - `root` (trust domain `example.org`) → `intermediate` with
///   `nameConstraints=critical,permitted;URI:example.org` → leaves `client` and
///   `server`, each with one SPIFFE URI SAN;
/// - `rogue-root` → `rogue-intermediate` → `rogue` leaf: a well-formed SVID for the
///   same trust domain from a root nobody trusts.
final class CLITestPKI: Sendable {
    static let trustDomain = "example.org"
    static let clientID = "spiffe://example.org/ns/shop/sa/client"
    static let serverID = "spiffe://example.org/ns/shop/sa/server"
    static let rogueID = "spiffe://example.org/ns/shop/sa/rogue"

    /// Made once per test process.
    static let shared: CLITestPKI = {
        do {
            let pki = try CLITestPKI()
            // A static is never deinitialized: remove the files when the process exits.
            cliTestPKIDirectory.withLock { $0 = pki.directory }
            atexit {
                if let directory = cliTestPKIDirectory.current {
                    try? FileManager.default.removeItem(atPath: directory)
                }
            }
            return pki
        } catch {
            fatalError("making the test PKI with the openssl CLI failed: \(error)")
        }
    }()

    let directory: String
    let rootPEM: String

    enum Identity: String, Sendable {
        case client, server, rogue
    }

    private init() throws {
        directory = NSTemporaryDirectory() + "mesh-tls-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Maker.config.write(toFile: directory + "/openssl.cnf", atomically: true, encoding: .utf8)

        let maker = Maker(directory: directory)
        try maker.makeCA("root", subject: "/O=mesh-agent test/CN=test root", issuer: nil, section: "root")
        try maker.makeCA("intermediate", subject: "/O=mesh-agent test/CN=node intermediate", issuer: "root", section: "intermediate")
        try maker.makeLeaf("client", uri: Self.clientID, issuer: "intermediate")
        try maker.makeLeaf("server", uri: Self.serverID, issuer: "intermediate")
        try maker.makeCA("rogue-root", subject: "/O=rogue/CN=rogue root", issuer: nil, section: "root")
        try maker.makeCA("rogue-intermediate", subject: "/O=rogue/CN=rogue intermediate", issuer: "rogue-root", section: "intermediate")
        try maker.makeLeaf("rogue", uri: Self.rogueID, issuer: "rogue-intermediate")
        rootPEM = try String(contentsOfFile: directory + "/root.pem", encoding: .utf8)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    func path(_ name: String) -> String { "\(directory)/\(name)" }
    func certificatePath(_ identity: Identity) -> String { path("\(identity.rawValue).pem") }
    func keyPath(_ identity: Identity) -> String { path("\(identity.rawValue).key") }
    /// The intermediate that goes with `identity`'s leaf, for `-cert_chain`.
    func intermediatePath(_ identity: Identity) -> String {
        identity == .rogue ? path("rogue-intermediate.pem") : path("intermediate.pem")
    }
    var rootPath: String { path("root.pem") }

    /// `[leaf, intermediate]` and the leaf's key.
    func credentials(_ identity: Identity) throws -> ([Certificate], PrivateKey) {
        // chain(fromPEM:)[0], not Certificate(pem:): in release builds the latter can
        // free the parsed chain before taking its own reference (reported upstream).
        let leaf = try Certificate.chain(fromPEM: String(contentsOfFile: certificatePath(identity), encoding: .utf8))[0]
        let intermediate = try Certificate.chain(fromPEM: String(contentsOfFile: intermediatePath(identity), encoding: .utf8))[0]
        let key = try PrivateKey(pem: String(contentsOfFile: keyPath(identity), encoding: .utf8))
        return ([leaf, intermediate], key)
    }

    /// The real verifier, trusting our root and the example.org trust domain.
    func verifier() throws -> SpiffeVerifier {
        SpiffeVerifier(bundle: try TrustBundle(pem: rootPEM), acceptedTrustDomains: [Self.trustDomain])
    }

    func context(
        _ role: TLSConfiguration.Role, as identity: Identity? = nil, alpn: [String] = ["h2"],
        handshakeTimeout: TimeAmount = .seconds(10), verifier: (any PeerCertificateVerifier)? = nil
    ) throws -> TLSContext {
        let (chain, key) = try credentials(identity ?? (role == .client ? .client : .server))
        return try TLSContext(configuration: TLSConfiguration(
            role: role, certificateChain: chain, privateKey: key, verifier: try verifier ?? self.verifier(),
            applicationProtocols: alpn, handshakeTimeout: handshakeTimeout))
    }

}

/// Runs the openssl commands that make the files.
private struct Maker {
    let directory: String

    func path(_ name: String) -> String { "\(directory)/\(name)" }

    func makeCA(_ name: String, subject: String, issuer: String?, section: String) throws {
        try genkey(name)
        if let issuer {
            try OpenSSLTool.run(["req", "-new", "-key", path("\(name).key"), "-subj", subject, "-out", path("\(name).csr"),
                                 "-config", path("openssl.cnf")])
            try OpenSSLTool.run(["x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(issuer).pem"),
                                 "-CAkey", path("\(issuer).key"), "-set_serial", serial(), "-days", "30",
                                 "-extfile", path("openssl.cnf"), "-extensions", section, "-out", path("\(name).pem")])
        } else {
            try OpenSSLTool.run(["req", "-x509", "-new", "-key", path("\(name).key"), "-subj", subject, "-days", "30",
                                 "-set_serial", serial(), "-config", path("openssl.cnf"), "-extensions", section,
                                 "-out", path("\(name).pem")])
        }
    }

    func makeLeaf(_ name: String, uri: String, issuer: String) throws {
        try genkey(name)
        try OpenSSLTool.run(["req", "-new", "-key", path("\(name).key"), "-subj", "/O=mesh-agent test", "-out", path("\(name).csr"),
                             "-config", path("openssl.cnf")])
        try OpenSSLTool.run(["x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(issuer).pem"),
                             "-CAkey", path("\(issuer).key"), "-set_serial", serial(), "-days", "2",
                             "-extfile", path("openssl.cnf"), "-extensions", "leaf", "-out", path("\(name).pem")],
                            environment: ["LEAF_URI": uri])
    }

    func genkey(_ name: String) throws {
        try OpenSSLTool.run(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                             "-pkeyopt", "ec_param_enc:named_curve", "-out", path("\(name).key")])
    }

    func serial() -> String { String(UInt64.random(in: 1...(UInt64.max >> 2))) }

    static let config = """
        [req]
        distinguished_name = dn
        [dn]
        [root]
        basicConstraints = critical,CA:true
        keyUsage = critical,keyCertSign,cRLSign
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid:always
        [intermediate]
        basicConstraints = critical,CA:true,pathlen:0
        keyUsage = critical,keyCertSign,cRLSign
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid:always
        nameConstraints = critical,permitted;URI:example.org
        [leaf]
        basicConstraints = critical,CA:false
        keyUsage = critical,digitalSignature
        extendedKeyUsage = serverAuth,clientAuth
        subjectKeyIdentifier = hash
        authorityKeyIdentifier = keyid:always
        subjectAltName = URI:${ENV::LEAF_URI}

        """
}

private let cliTestPKIDirectory = LockedBox<String?>(nil)

/// Runs the `openssl` command line tool.
enum OpenSSLTool {
    struct Failure: Error, CustomStringConvertible {
        let arguments: [String]
        let status: Int32
        let output: String
        var description: String { "openssl \(arguments.joined(separator: " ")) exited \(status): \(output)" }
    }

    static let executable: String = {
        for candidate in ["/usr/bin/openssl", "/usr/local/bin/openssl"] where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return "/usr/bin/openssl"
    }()

    /// Runs to completion; throws on a non-zero exit. Returns stdout and stderr.
    @discardableResult
    static func run(_ arguments: [String], environment: [String: String] = [:]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env["LEAF_URI"] = env["LEAF_URI"] ?? "spiffe://unused"
        for (key, value) in environment { env[key] = value }
        process.environment = env
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let output = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw Failure(arguments: arguments, status: process.terminationStatus, output: output)
        }
        return output
    }
}
