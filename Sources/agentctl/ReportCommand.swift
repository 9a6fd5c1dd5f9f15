import ArgumentParser
import Foundation
import Graph

extension PolicyCommand {
    struct Report: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Per policy and rule over a window: allowed, denied, would-deny (dry-run), last match; unused rules; plaintext peers that block STRICT."
        )

        @OptionGroup var connection: AgentConnection

        @Option(help: "Only what was seen within this long before now, like 7d or 24h (default: everything kept).")
        var since: String?

        func run() throws {
            let start = try GraphCommand.windowStart(since)
            let path = start.map { "/v1/policy/report?since=\(String(format: "%.3f", $0))" } ?? "/v1/policy/report"
            let (report, raw) = try connection.fetch(path, as: PolicyReport.self)
            switch connection.output {
            case .json:
                print(String(decoding: raw, as: UTF8.self))
            case .table:
                if report.rules.isEmpty {
                    print("no AuthorizationPolicy is in force")
                } else {
                    printTable(
                        ["POLICY", "RULE", "ACTION", "ALLOWED", "DENIED", "WOULD DENY", "LAST MATCH", ""],
                        report.rules.map { row in
                            [
                                row.policy, row.rule.map(String.init) ?? "(none matched)", row.action + (row.dryRun ? " (dry-run)" : ""),
                                String(row.allowed), String(row.denied), String(row.wouldDeny), row.lastMatch ?? "-", [row.unused ? "unused" : "", row.expired ? "expired grant" : ""].filter { !$0.isEmpty }.joined(separator: ", "),
                            ]
                        })
                }
                print("")
                if report.strictBlockers.isEmpty {
                    print("no plaintext peer was seen\(since.map { " in the last \($0)" } ?? ""): nothing blocks STRICT")
                } else {
                    print("plaintext peers that STRICT would refuse:")
                    printTable(
                        ["WORKLOAD", "PEER", "PORT", "CONNECTIONS", "LAST SEEN"],
                        report.strictBlockers.map { [$0.dstWorkload, $0.srcAddr, String($0.dstPort), String($0.connections), $0.lastSeen] })
                }
            }
        }
    }
}
