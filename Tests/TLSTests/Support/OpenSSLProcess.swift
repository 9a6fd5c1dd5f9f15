import Foundation

/// An `openssl s_server` / `s_client` / `s_time` run in the background, its output
/// going to a file the test can poll. `stop()` (also run from deinit) terminates
/// exactly this process, by its PID.
final class OpenSSLProcess: @unchecked Sendable {
    private let process = Process()
    private let input = Pipe()
    private let outputPath: String
    private var inputClosed = false

    init(_ arguments: [String], outputDirectory: String = NSTemporaryDirectory()) throws {
        outputPath = outputDirectory + "/openssl-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).out"
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        guard let output = FileHandle(forWritingAtPath: outputPath) else {
            throw POSIXError(.EACCES)
        }
        process.executableURL = URL(fileURLWithPath: OpenSSLTool.executable)
        process.arguments = arguments
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        try? output.close()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: outputPath)
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// Everything it printed so far (stdout and stderr).
    var output: String {
        (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    }

    @discardableResult
    func waitForOutput(containing text: String, timeout: TimeInterval = 10) -> Bool {
        waitUntil(timeout: timeout) { output.contains(text) }
    }

    func send(_ text: String) {
        input.fileHandleForWriting.write(Data(text.utf8))
    }

    /// EOF on its stdin (s_client then shuts the connection down and exits).
    func closeInput() {
        guard !inputClosed else { return }
        inputClosed = true
        try? input.fileHandleForWriting.close()
    }

    /// The exit status, or nil if it is still running after `timeout`.
    func waitForExit(timeout: TimeInterval = 10) -> Int32? {
        guard waitUntil(timeout: timeout, { !process.isRunning }) else { return nil }
        return process.terminationStatus
    }

    /// Terminates it (SIGTERM, then SIGKILL) if it still runs, and reaps it.
    func stop() {
        closeInput()
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        if waitForExit(timeout: 2) == nil {
            kill(process.processIdentifier, SIGKILL)
            _ = waitForExit(timeout: 2)
        }
    }
}
