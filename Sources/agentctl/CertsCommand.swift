import AdminAPI
import ArgumentParser
import Foundation

struct CertsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "certs",
        abstract: "The workload certificates (SVIDs) the agent holds: identity, serial, validity, state."
    )

    @OptionGroup var connection: AgentConnection

    func run() throws {
        let (certificates, raw) = try connection.fetch("/v1/certs", as: [AdminViews.CertificateView].self)
        switch connection.output {
        case .json:
            print(String(decoding: raw, as: UTF8.self))
        case .table:
            printTable(
                ["IDENTITY", "SERIAL", "NOT BEFORE", "NOT AFTER", "STATE"],
                certificates.map { [$0.identity, $0.serial ?? "-", $0.notBefore ?? "-", $0.notAfter ?? "-", $0.state + ($0.lastError.map { " (\($0))" } ?? "")] }
            )
        }
    }
}
