import AdminAPI
import ArgumentParser
import Foundation

struct ConnectionsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connections",
        abstract: "The connections the agent is proxying now: direction, who to whom, TLS, bytes so far."
    )

    @OptionGroup var connection: AgentConnection

    func run() throws {
        let (connections, raw) = try connection.fetch("/v1/connections", as: [AdminViews.ConnectionView].self)
        switch connection.output {
        case .json:
            print(String(decoding: raw, as: UTF8.self))
        case .table:
            printTable(
                ["DIRECTION", "SOURCE", "DESTINATION", "TLS", "ROUTE", "BYTES SENT", "BYTES RECEIVED", "AGE"],
                connections.map { view in
                    [
                        view.direction,
                        Self.endpoint(view.sourceIdentity ?? view.sourceWorkload, view.sourceAddress),
                        Self.endpoint(view.destinationIdentity ?? view.destinationWorkload, view.destinationAddress),
                        view.tls, view.reason, String(view.bytesSent), String(view.bytesReceived),
                        String(format: "%.1fs", view.durationMilliseconds / 1000),
                    ]
                }
            )
        }
    }

    private static func endpoint(_ who: String?, _ address: String?) -> String {
        switch (who, address) {
        case let (who?, address?): return "\(who) (\(address))"
        case let (who?, nil): return who
        case let (nil, address?): return address
        case (nil, nil): return "-"
        }
    }
}
