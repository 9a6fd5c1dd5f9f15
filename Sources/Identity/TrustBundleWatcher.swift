import Foundation
import Logging
import Metrics
import NIOConcurrencyHelpers
import TLS

/// The trust bundle file (PEM roots), watched for changes. A new valid bundle
/// replaces the current one and is reported; a file that cannot be read or
/// parsed is logged and counted, and the current bundle stays in force — a bad
/// edit must not take the node's trust away.
public final class TrustBundleWatcher: Sendable {
    private struct FileStamp: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var modified: Int64
        var modifiedNanoseconds: Int
    }

    private struct State {
        var bundle: TrustBundle
        var stamp: FileStamp?
        var lastError: String?
    }

    public let path: String
    private let logger: Logger
    private let state: NIOLockedValueBox<State>
    private let reloads = Counter(label: "mesh_agent_trust_bundle_reloads_total", dimensions: [("result", "success")])
    private let failures = Counter(label: "mesh_agent_trust_bundle_reloads_total", dimensions: [("result", "failure")])

    /// Reads the bundle once; throws if it cannot, since a node without trust
    /// roots can neither verify peers nor be verified.
    public init(path: String, logger: Logger) throws {
        self.path = path
        self.logger = logger
        let stamp = Self.stamp(of: path)
        let bundle = try Self.read(path)
        self.state = NIOLockedValueBox(State(bundle: bundle, stamp: stamp))
    }

    public var bundle: TrustBundle { state.withLockedValue { $0.bundle } }
    public var lastError: String? { state.withLockedValue { $0.lastError } }

    /// Checks the file; returns the new bundle if it changed and is valid.
    public func poll() -> TrustBundle? {
        let stamp = Self.stamp(of: path)
        let unchanged = state.withLockedValue { $0.stamp == stamp && stamp != nil }
        if unchanged { return nil }
        do {
            let candidate = try Self.read(path)
            return state.withLockedValue { state -> TrustBundle? in
                state.stamp = stamp
                state.lastError = nil
                guard candidate.fingerprint != state.bundle.fingerprint else { return nil }
                state.bundle = candidate
                reloads.increment()
                logger.info("trust bundle \(path) changed: \(candidate.roots.count) root(s)")
                return candidate
            }
        } catch {
            let message = "\(error)"
            let isNew = state.withLockedValue { state -> Bool in
                state.stamp = stamp
                defer { state.lastError = message }
                return state.lastError != message
            }
            failures.increment()
            if isNew {
                logger.error("trust bundle \(path) not reloaded, the previous roots stay in force: \(message)")
            }
            return nil
        }
    }

    private static func read(_ path: String) throws -> TrustBundle {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw TrustBundleFileError(path: path, problem: "cannot be read: \(error.localizedDescription)")
        }
        do {
            return try TrustBundle(pem: text)
        } catch {
            throw TrustBundleFileError(path: path, problem: "\(error)")
        }
    }

    private static func stamp(of path: String) -> FileStamp? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return FileStamp(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modified: Int64(info.st_mtim.tv_sec), modifiedNanoseconds: Int(info.st_mtim.tv_nsec)
        )
    }
}

public struct TrustBundleFileError: Error, CustomStringConvertible {
    public let path: String
    public let problem: String
    public var description: String { "trust bundle \(path): \(problem); it must hold the PEM root certificates (agentctl ca issue-intermediate writes bundle.pem)" }
}
