import ArgumentParser
import Foundation
import Identity
import TLS

struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "Make the offline root and node intermediate certificate authorities.",
        discussion: """
            mesh-agent's local CA has two levels: an offline root (keep root.key off the \
            nodes) and one intermediate per node, limited by a name constraint to the \
            trust domain, which the agent uses to sign its workloads' certificates.
            """,
        subcommands: [Init.self, IssueIntermediate.self]
    )

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "init",
            abstract: "Make a new root CA: DIR/root.pem (mode 0644) and DIR/root.key (mode 0600).",
            discussion: "Refuses to overwrite existing files. DIR is created with mode 0700 when missing."
        )

        @Option(name: .customLong("trust-domain"), help: "The SPIFFE trust domain, e.g. cluster.local.")
        var trustDomain: String

        @Option(help: ArgumentHelp("Directory to write root.pem and root.key to.", valueName: "DIR"))
        var out: String

        @Option(help: ArgumentHelp(
            "How long the root is valid: a number with a unit d (days), h, m or s, combinable (8760h, 365d, 90d12h).",
            valueName: "DURATION"))
        var lifetime: Lifetime = Lifetime(CertificateBuilder.defaultRootLifetime, text: "3650d")

        func run() throws {
            let written = try reportingErrors {
                try CAFiles.initRoot(trustDomain: trustDomain, directory: out, lifetime: lifetime.duration)
            }
            let root = written.certificate
            print("Made a root CA for trust domain \(written.trustDomain), valid until \(Certificate.formatTime(root.notAfter)) (serial \(root.serialNumberHex)).")
            for file in written.files { print("  wrote \(describe(file))") }
            print("Keep \(CAFiles.rootKeyName) offline, readable only by you.")
            print("Next, for each node: agentctl ca issue-intermediate --ca \(out) --name NODE --out DIR")
        }
    }

    struct IssueIntermediate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "issue-intermediate",
            abstract: "Make a node's intermediate CA, signed by the root in --ca: DIR2/intermediate.pem, DIR2/intermediate.key (0600), DIR2/bundle.pem.",
            discussion: """
                The intermediate carries basicConstraints CA:true, pathlen:0 and the name \
                constraint permitted;URI:<trust domain>, so it can only sign that trust \
                domain's SPIFFE IDs. bundle.pem holds the root certificate(s) from the CA \
                directory's root.pem. Refuses to overwrite existing files. DIR2 is created \
                with mode 0755 when missing.
                """
        )

        @Option(help: ArgumentHelp("The root CA directory (root.pem, root.key) made by agentctl ca init.", valueName: "DIR"))
        var ca: String

        @Option(help: ArgumentHelp("The node's name (letters, digits, '.', '-', '_'), written into the certificate's subject.", valueName: "NODE"))
        var name: String

        @Option(help: ArgumentHelp("Directory to write intermediate.pem, intermediate.key and bundle.pem to.", valueName: "DIR2"))
        var out: String

        @Option(name: .customLong("trust-domain"), help: "The trust domain (default: the root's, from its subject O=).")
        var trustDomain: String?

        @Option(help: ArgumentHelp(
            "How long the intermediate is valid, never beyond the root: a number with a unit d (days), h, m or s, combinable (8760h, 365d, 90d12h).",
            valueName: "DURATION"))
        var lifetime: Lifetime = Lifetime(CertificateBuilder.defaultIntermediateLifetime, text: "365d")

        func run() throws {
            let written = try reportingErrors {
                try CAFiles.issueIntermediate(
                    caDirectory: ca, nodeName: name, outDirectory: out, trustDomain: trustDomain, lifetime: lifetime.duration)
            }
            let intermediate = written.certificate
            let constraints = intermediate.nameConstraints?.permitted.joined(separator: ", ") ?? "none"
            print("Made the intermediate CA for node \(name) in trust domain \(written.trustDomain), valid until \(Certificate.formatTime(intermediate.notAfter)) (serial \(intermediate.serialNumberHex), name constraint \(constraints)).")
            for file in written.files { print("  wrote \(describe(file))") }
            print("""
                Next: install these three files on node \(name) (e.g. in /etc/mesh-agent/ca/, keeping \
                \(CAFiles.intermediateKeyName) mode 0600) and point the agent's config at them:
                  ca: {mode: local, certificate: .../\(CAFiles.intermediateCertificateName), key: .../\(CAFiles.intermediateKeyName), trustBundle: .../\(CAFiles.bundleName)}
                """)
        }
    }
}

/// A lifetime on the command line: `365d`, `8760h`, `90d12h`, `30m`, `3600s`.
struct Lifetime: ExpressibleByArgument {
    let duration: Duration
    let text: String

    init(_ duration: Duration, text: String) {
        self.duration = duration
        self.text = text
    }

    init?(argument: String) {
        guard let seconds = Self.parse(argument), seconds >= 1 else { return nil }
        self.init(.seconds(seconds), text: argument)
    }

    var defaultValueDescription: String { text }

    static func parse(_ text: String) -> Int64? {
        var total: Int64 = 0
        var number: Int64?
        for character in text {
            if let digit = character.wholeNumberValue, character.isASCII {
                let (times, overflow1) = (number ?? 0).multipliedReportingOverflow(by: 10)
                let (sum, overflow2) = times.addingReportingOverflow(Int64(digit))
                guard !overflow1, !overflow2 else { return nil }
                number = sum
                continue
            }
            let unit: Int64
            switch character {
            case "d": unit = 86400
            case "h": unit = 3600
            case "m": unit = 60
            case "s": unit = 1
            default: return nil
            }
            guard let value = number else { return nil }
            let (scaled, overflow1) = value.multipliedReportingOverflow(by: unit)
            let (sum, overflow2) = total.addingReportingOverflow(scaled)
            guard !overflow1, !overflow2 else { return nil }
            total = sum
            number = nil
        }
        // A bare number, or one left without a unit, is ambiguous: refuse it.
        guard number == nil, !text.isEmpty else { return nil }
        return total
    }
}

/// Runs `body`; on failure prints `error: …` to stderr and exits with status 1.
private func reportingErrors<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
        throw ExitCode.failure
    }
}

private func describe(_ path: String) -> String {
    if path.hasSuffix(".key") { return "\(path) (private key, mode 0600)" }
    if path.hasSuffix(CAFiles.bundleName) { return "\(path) (trust bundle, mode 0644)" }
    return "\(path) (certificate, mode 0644)"
}
