import Foundation
import Logging
import Testing
import TLS
@testable import Identity

@Suite struct TrustBundleWatcherTests {
    func rootPEM(_ trustDomain: String = "cluster.local") throws -> String {
        try CertificateBuilder.makeRoot(trustDomain: trustDomain, key: PrivateKey.generateP256()).pemRepresentation()
    }

    func temporaryFile(_ text: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("bundle-\(UUID().uuidString).pem").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func reportsAChangeOnceAndKeepsTheOldBundleOnCorruption() throws {
        let first = try rootPEM()
        let path = try temporaryFile(first)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let watcher = try TrustBundleWatcher(path: path, logger: Logger(label: "test"))
        #expect(watcher.bundle.roots.count == 1)
        #expect(watcher.poll() == nil, "nothing changed")

        let second = try rootPEM()
        try (first + second).write(toFile: path, atomically: true, encoding: .utf8)
        let changed = try #require(watcher.poll())
        #expect(changed.roots.count == 2)
        #expect(watcher.poll() == nil, "a change is reported once")

        try String(first.prefix(100)).write(toFile: path, atomically: true, encoding: .utf8)
        #expect(watcher.poll() == nil)
        #expect(watcher.bundle.roots.count == 2, "a corrupt file leaves the last good bundle in force")
        #expect(watcher.lastError?.contains(path) == true)

        // Rewriting the same roots (new inode, same content) is not a change.
        try (first + second).write(toFile: path, atomically: true, encoding: .utf8)
        #expect(watcher.poll() == nil)
        #expect(watcher.lastError == nil)
    }

    @Test(arguments: ["", "not a certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
    func aBadBundleAtStartIsAnError(text: String) throws {
        let path = try temporaryFile(text)
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(throws: TrustBundleFileError.self) { try TrustBundleWatcher(path: path, logger: Logger(label: "test")) }
    }

    @Test func aMissingBundleAtStartIsAnError() {
        #expect(throws: TrustBundleFileError.self) { try TrustBundleWatcher(path: "/nonexistent/bundle.pem", logger: Logger(label: "test")) }
    }
}
