import Glibc
import TestFixtures
import Testing
@testable import Identity
import TLS

/// A fresh directory under /tmp, removed (with everything in it) at the end.
final class TemporaryDirectory {
    let path: String

    init() throws {
        var template = Array("/tmp/mesh-agent-ca-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw CAFileError(path: "/tmp", problem: "mkdtemp failed") }
        path = String(cString: made)
    }

    deinit {
        remove(path)
    }

    func sub(_ name: String) -> String { path + "/" + name }

    private func remove(_ path: String) {
        if let directory = opendir(path) {
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name == "." || name == ".." { continue }
                remove(path + "/" + name)
            }
            closedir(directory)
            rmdir(path)
        } else {
            unlink(path)
        }
    }
}

func mode(_ path: String) -> mode_t? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return info.st_mode & 0o7777
}

func exists(_ path: String) -> Bool { mode(path) != nil }

func readText(_ path: String) throws -> String {
    try CAFiles.readFile(path: path, what: "test")
}

func writeText(_ path: String, _ text: String, mode: mode_t) throws {
    unlink(path)
    try CAFiles.createFile(path: path, contents: text, mode: mode)
}

/// `agentctl ca init` + `ca issue-intermediate` into a temporary directory.
struct CAFixture {
    let directory: TemporaryDirectory
    let caDirectory: String
    let nodeDirectory: String
    let root: CAFiles.Written
    let intermediate: CAFiles.Written

    init(trustDomain: String = "cluster.local", node: String = "node-a") throws {
        directory = try TemporaryDirectory()
        caDirectory = directory.sub("root-ca")
        nodeDirectory = directory.sub("nodes/\(node)")
        root = try CAFiles.initRoot(trustDomain: trustDomain, directory: caDirectory)
        intermediate = try CAFiles.issueIntermediate(caDirectory: caDirectory, nodeName: node, outDirectory: nodeDirectory)
    }

    var certificatePath: String { nodeDirectory + "/intermediate.pem" }
    var keyPath: String { nodeDirectory + "/intermediate.key" }
    var bundlePath: String { nodeDirectory + "/bundle.pem" }

    func localCA() throws -> LocalCA {
        try LocalCA(certificatePath: certificatePath, keyPath: keyPath, trustDomain: "cluster.local")
    }
}

@Suite struct LocalCAFilesTests {
    @Test func initWritesTheRootWithExactModes() throws {
        let temp = try TemporaryDirectory()
        let directory = temp.sub("ca")
        let written = try CAFiles.initRoot(trustDomain: "cluster.local", directory: directory)
        #expect(written.files == [directory + "/root.key", directory + "/root.pem"])
        #expect(mode(directory) == 0o700)
        #expect(mode(directory + "/root.key") == 0o600)
        #expect(mode(directory + "/root.pem") == 0o644)
        let root = try Certificate(pem: try readText(directory + "/root.pem"))
        #expect(root == written.certificate)
        #expect(root.isCA && root.isSelfSigned)
        #expect(root.subjectOrganization == "cluster.local")
        let key = try CAFiles.readPrivateKey(path: directory + "/root.key")
        #expect(root.publicKeyMatches(key))
        // Ten years by default.
        #expect(root.notAfter - root.notBefore == 3650 * 86400 + 60)
    }

    @Test func issueIntermediateWritesThreeFilesWithExactModes() throws {
        let fixture = try CAFixture()
        #expect(fixture.intermediate.files == [fixture.keyPath, fixture.certificatePath, fixture.bundlePath])
        #expect(mode(fixture.keyPath) == 0o600)
        #expect(mode(fixture.certificatePath) == 0o644)
        #expect(mode(fixture.bundlePath) == 0o644)
        #expect(mode(fixture.nodeDirectory) == 0o755)
        let intermediate = try CAFiles.readCertificates(path: fixture.certificatePath)
        #expect(intermediate == [fixture.intermediate.certificate])
        #expect(intermediate[0].nameConstraints?.permitted == ["URI:cluster.local"])
        #expect(intermediate[0].pathLengthConstraint == 0)
        #expect(intermediate[0].subject == "CN=mesh-agent node node-a,O=cluster.local")
        #expect(fixture.intermediate.trustDomain == "cluster.local")
        let bundle = try CAFiles.loadTrustBundle(path: fixture.bundlePath)
        #expect(bundle.roots == [fixture.root.certificate])
        #expect(intermediate[0].notAfter - intermediate[0].notBefore == 365 * 86400 + 60)
    }

    @Test func lifetimesAreConfigurableAndClampedToTheRoot() throws {
        let temp = try TemporaryDirectory()
        let root = try CAFiles.initRoot(trustDomain: "cluster.local", directory: temp.sub("ca"), lifetime: .seconds(30 * 86400))
        let node = try CAFiles.issueIntermediate(
            caDirectory: temp.sub("ca"), nodeName: "n1", outDirectory: temp.sub("n1"), lifetime: .seconds(365 * 86400))
        #expect(node.certificate.notAfter == root.certificate.notAfter)
        let short = try CAFiles.issueIntermediate(
            caDirectory: temp.sub("ca"), nodeName: "n2", outDirectory: temp.sub("n2"), lifetime: .seconds(86400))
        #expect(short.certificate.notAfter - short.certificate.notBefore == 86400 + 60)
    }

    @Test func initRefusesToOverwrite() throws {
        let temp = try TemporaryDirectory()
        let directory = temp.sub("ca")
        _ = try CAFiles.initRoot(trustDomain: "cluster.local", directory: directory)
        let before = try readText(directory + "/root.key")
        let error = #expect(throws: CAFileError.self) {
            try CAFiles.initRoot(trustDomain: "cluster.local", directory: directory)
        }
        #expect(error?.description.contains("already exists") == true)
        #expect(try readText(directory + "/root.key") == before)
    }

    @Test func initRefusesWhenOnlyOneFileExists() throws {
        let temp = try TemporaryDirectory()
        let directory = temp.sub("ca")
        CAFiles.makeDirectoryForTests(directory)
        try writeText(directory + "/root.pem", "placeholder", mode: 0o644)
        let error = #expect(throws: CAFileError.self) {
            try CAFiles.initRoot(trustDomain: "cluster.local", directory: directory)
        }
        #expect(error?.path == directory + "/root.pem")
        #expect(!exists(directory + "/root.key"))
    }

    @Test func issueIntermediateRefusesToOverwriteAndWritesNothing() throws {
        let fixture = try CAFixture()
        let before = try readText(fixture.keyPath)
        #expect(throws: CAFileError.self) {
            try CAFiles.issueIntermediate(caDirectory: fixture.caDirectory, nodeName: "node-a", outDirectory: fixture.nodeDirectory)
        }
        #expect(try readText(fixture.keyPath) == before)

        // Only bundle.pem in the way: refused before anything is written.
        let other = fixture.directory.sub("other")
        CAFiles.makeDirectoryForTests(other)
        try writeText(other + "/bundle.pem", "keep me", mode: 0o644)
        let error = #expect(throws: CAFileError.self) {
            try CAFiles.issueIntermediate(caDirectory: fixture.caDirectory, nodeName: "node-b", outDirectory: other)
        }
        #expect(error?.path == other + "/bundle.pem")
        #expect(!exists(other + "/intermediate.key"))
        #expect(!exists(other + "/intermediate.pem"))
        #expect(try readText(other + "/bundle.pem") == "keep me")
    }

    @Test func issueIntermediateNeedsAnExistingCADirectory() throws {
        let temp = try TemporaryDirectory()
        let error = #expect(throws: CAFileError.self) {
            try CAFiles.issueIntermediate(caDirectory: temp.sub("missing"), nodeName: "node-a", outDirectory: temp.sub("out"))
        }
        #expect(error?.path == temp.sub("missing"))
        #expect(error?.description.contains("agentctl ca init") == true)
        #expect(!exists(temp.sub("out")))
    }

    @Test func refusesBadTrustDomainsAndNodeNames() throws {
        let temp = try TemporaryDirectory()
        #expect(throws: SpiffeIDError.self) { try CAFiles.initRoot(trustDomain: "Cluster.Local", directory: temp.sub("ca")) }
        #expect(throws: SpiffeIDError.self) { try CAFiles.initRoot(trustDomain: "td:8080", directory: temp.sub("ca")) }
        #expect(!exists(temp.sub("ca")))
        _ = try CAFiles.initRoot(trustDomain: "cluster.local", directory: temp.sub("ca"))
        #expect(throws: CertificateBuilderError.invalidNodeName("bad/name")) {
            try CAFiles.issueIntermediate(caDirectory: temp.sub("ca"), nodeName: "bad/name", outDirectory: temp.sub("out"))
        }
        #expect(!exists(temp.sub("out/intermediate.key")))
    }

    @Test func rootPEMWithSeveralRootsSignsWithTheMatchingOneAndBundlesAll() throws {
        let temp = try TemporaryDirectory()
        let old = try CAFiles.initRoot(trustDomain: "cluster.local", directory: temp.sub("old"))
        let new = try CAFiles.initRoot(trustDomain: "cluster.local", directory: temp.sub("new"))
        // During a rotation: the new root signs, both are trusted.
        let both = try new.certificate.pemRepresentation() + old.certificate.pemRepresentation()
        try writeText(temp.sub("new/root.pem"), both, mode: 0o644)
        let node = try CAFiles.issueIntermediate(caDirectory: temp.sub("new"), nodeName: "node-a", outDirectory: temp.sub("node"))
        #expect(node.certificate.authorityKeyIdentifier == new.certificate.subjectKeyIdentifier)
        let bundle = try CAFiles.loadTrustBundle(path: temp.sub("node/bundle.pem"))
        #expect(bundle.roots == [new.certificate, old.certificate])
    }
}

@Suite struct LocalCATests {
    @Test func issuesSVIDsThatVerifyOverTheWrittenBundle() throws {
        let fixture = try CAFixture()
        let ca = try fixture.localCA()
        #expect(ca.trustDomain == "cluster.local")
        #expect(ca.signingCertificate == fixture.intermediate.certificate)
        let identity = try SpiffeID("spiffe://cluster.local/ns/shop/sa/orders")
        let key = try PrivateKey.generateP256()
        let chain = try ca.issue(identity: identity, key: key, lifetime: .seconds(86400))
        #expect(chain.count == 2)
        #expect(chain[1] == fixture.intermediate.certificate)
        #expect(chain[0].uriSANs == [identity.description])
        #expect(chain[0].publicKeyMatches(key))
        #expect(chain[0].notAfter - chain[0].notBefore == 86400 + 60)

        let bundle = try CAFiles.loadTrustBundle(path: fixture.bundlePath)
        let verifier = SpiffeVerifier(bundle: bundle, acceptedTrustDomains: ["cluster.local"], expectedIdentity: identity)
        #expect(verifier.verify(peerChain: chain) == .success(identity))
        // Another node's CA under the same root is trusted too.
        let nodeB = try CAFiles.issueIntermediate(caDirectory: fixture.caDirectory, nodeName: "node-b", outDirectory: fixture.directory.sub("node-b"))
        let caB = try LocalCA(certificatePath: nodeB.files[1], keyPath: nodeB.files[0], trustDomain: "cluster.local")
        let chainB = try caB.issue(identity: identity, key: key, lifetime: .seconds(3600))
        #expect(verifier.verify(peerChain: chainB) == .success(identity))
    }

    @Test func refusesIdentitiesOfOtherTrustDomains() throws {
        let ca = try CAFixture().localCA()
        #expect(throws: LocalCAError.self) {
            try ca.issue(identity: try SpiffeID("spiffe://other.test/ns/a/sa/b"), key: try PrivateKey.generateP256(), lifetime: .seconds(60))
        }
    }

    @Test func refusesATrustDomainOutsideTheNameConstraint() throws {
        let fixture = try CAFixture()
        let error = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: fixture.certificatePath, keyPath: fixture.keyPath, trustDomain: "other.test")
        }
        #expect(error?.path == fixture.certificatePath)
        #expect(error?.problem.contains("other.test") == true)
    }

    @Test func refusesAKeyReadableByOthersWithChmodAdvice() throws {
        let fixture = try CAFixture()
        for bits: mode_t in [0o644, 0o640, 0o604, 0o660] {
            #expect(chmod(fixture.keyPath, bits) == 0)
            let error = #expect(throws: CAFileError.self) { try fixture.localCA() }
            #expect(error?.path == fixture.keyPath)
            #expect(error?.description.contains("chmod 600 \(fixture.keyPath)") == true, "\(String(describing: error))")
        }
        // 0400 is stricter than 0600 and fine.
        #expect(chmod(fixture.keyPath, 0o400) == 0)
        _ = try fixture.localCA()
    }

    @Test(.enabled(if: TestEnvironment.privilegedTestsRun, "needs root to chown"))
    func refusesAKeyOwnedBySomeoneElse() throws {
        let fixture = try CAFixture()
        #expect(chown(fixture.keyPath, 65534, 65534) == 0)
        let error = #expect(throws: CAFileError.self) { try fixture.localCA() }
        #expect(error?.path == fixture.keyPath)
        #expect(error?.problem.contains("owned by uid 65534") == true)
    }

    @Test func refusesDamagedCertificatesNamingTheFile() throws {
        let fixture = try CAFixture()
        let pem = try readText(fixture.certificatePath)
        let cases = [
            ("truncated", String(pem.prefix(pem.count / 2))),
            ("truncated-end", String(pem.prefix(pem.count - 30))),
            ("garbage", "this is not PEM at all\n"),
            ("garbage-base64", "-----BEGIN CERTIFICATE-----\nAAAAAAAAAAAAAAAA\n-----END CERTIFICATE-----\n"),
        ]
        for (name, text) in cases {
            let path = fixture.directory.sub("\(name).pem")
            try writeText(path, text, mode: 0o644)
            let error = #expect(throws: CAFileError.self, "\(name)") {
                try LocalCA(certificatePath: path, keyPath: fixture.keyPath, trustDomain: "cluster.local")
            }
            #expect(error?.path == path, "\(name)")
            #expect(error?.problem.contains("not a readable PEM certificate") == true, "\(name): \(String(describing: error))")
        }
        let empty = fixture.directory.sub("empty.pem")
        try writeText(empty, "", mode: 0o644)
        let error = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: empty, keyPath: fixture.keyPath, trustDomain: "cluster.local")
        }
        #expect(error?.description == "\(empty): the certificate file is empty")
    }

    @Test func refusesDamagedKeysNamingTheFile() throws {
        let fixture = try CAFixture()
        let pem = try readText(fixture.keyPath)
        let encrypted = """
            -----BEGIN ENCRYPTED PRIVATE KEY-----
            MIHsMFcGCSqGSIb3DQEFDTBKMCkGCSqGSIb3DQEFDDAcBAj/s/11/Eb/ZwICCAAw
            -----END ENCRYPTED PRIVATE KEY-----
            """
        let cases = [
            ("truncated", String(pem.prefix(pem.count / 2)), "not a readable PEM private key"),
            ("garbage", "garbage\n", "not a readable PEM private key"),
            ("certificate", try readText(fixture.certificatePath), "not a readable PEM private key"),
            ("encrypted", encrypted, "encrypted"),
        ]
        for (name, text, problem) in cases {
            let path = fixture.directory.sub("\(name).key")
            try writeText(path, text, mode: 0o600)
            let error = #expect(throws: CAFileError.self, "\(name)") {
                try LocalCA(certificatePath: fixture.certificatePath, keyPath: path, trustDomain: "cluster.local")
            }
            #expect(error?.path == path, "\(name)")
            #expect(error?.problem.contains(problem) == true, "\(name): \(String(describing: error))")
        }
    }

    @Test func refusesMissingFilesNamingThem() throws {
        let fixture = try CAFixture()
        let missing = fixture.directory.sub("missing.pem")
        let error = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: missing, keyPath: fixture.keyPath, trustDomain: "cluster.local")
        }
        #expect(error?.path == missing)
        #expect(error?.problem.contains("No such file") == true)
        let noKey = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: fixture.certificatePath, keyPath: fixture.directory.sub("missing.key"), trustDomain: "cluster.local")
        }
        #expect(noKey?.path == fixture.directory.sub("missing.key"))
        let directory = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: fixture.nodeDirectory, keyPath: fixture.keyPath, trustDomain: "cluster.local")
        }
        #expect(directory?.problem.contains("not a regular file") == true)
    }

    @Test func refusesAMismatchedKey() throws {
        let fixture = try CAFixture()
        let other = try CAFiles.issueIntermediate(caDirectory: fixture.caDirectory, nodeName: "node-b", outDirectory: fixture.directory.sub("node-b"))
        let error = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: fixture.certificatePath, keyPath: other.files[0], trustDomain: "cluster.local")
        }
        #expect(error?.path == other.files[0])
        #expect(error?.problem.contains("is not the private key") == true)
    }

    @Test func refusesANonCACertificate() throws {
        let fixture = try CAFixture()
        let ca = try fixture.localCA()
        let key = try PrivateKey.generateP256()
        let leaf = try ca.issue(identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/b"), key: key, lifetime: .seconds(3600))[0]
        let leafPath = fixture.directory.sub("leaf.pem")
        let leafKeyPath = fixture.directory.sub("leaf.key")
        try writeText(leafPath, try leaf.pemRepresentation(), mode: 0o644)
        try writeText(leafKeyPath, try key.pemRepresentation(), mode: 0o600)
        let error = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: leafPath, keyPath: leafKeyPath, trustDomain: "cluster.local")
        }
        #expect(error?.path == leafPath)
        #expect(error?.problem.contains("not a certificate authority") == true)
    }

    @Test func refusesAnExpiredIntermediate() throws {
        let fixture = try CAFixture()
        let later = fixture.intermediate.certificate.notAfter + 1
        let error = #expect(throws: CAFileError.self) {
            try LocalCA(certificatePath: fixture.certificatePath, keyPath: fixture.keyPath, trustDomain: "cluster.local", now: later)
        }
        #expect(error?.problem.contains("expired") == true)
    }

    @Test func certificateFileMayCarryFurtherIntermediates() throws {
        let fixture = try CAFixture()
        let extra = fixture.root.certificate  // any certificate: it is passed along as-is
        let path = fixture.directory.sub("chain.pem")
        try writeText(path, try fixture.intermediate.certificate.pemRepresentation() + extra.pemRepresentation(), mode: 0o644)
        let ca = try LocalCA(certificatePath: path, keyPath: fixture.keyPath, trustDomain: "cluster.local")
        let chain = try ca.issue(identity: try SpiffeID("spiffe://cluster.local/ns/a/sa/b"), key: try PrivateKey.generateP256(), lifetime: .seconds(60))
        #expect(chain.count == 3)
        #expect(chain[1] == fixture.intermediate.certificate)
        #expect(chain[2] == extra)
    }
}

extension CAFiles {
    static func makeDirectoryForTests(_ path: String) {
        _ = try? makeDirectory(path, mode: 0o755)
    }
}
