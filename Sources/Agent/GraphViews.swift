import AdminAPI
import Foundation
import Graph

extension AdminViews {
    struct GraphQueryError: Error, CustomStringConvertible {
        let description: String
    }

    /// `GET /v1/graph?since=SECONDS_SINCE_EPOCH`: `{"edges": [...]}`, the
    /// edges last seen in the window (all of them without `since`).
    static func graph(_ parameters: [(name: String, value: String)], graph: GraphRecorder) throws -> Data {
        var since: Double?
        for (name, value) in parameters {
            guard name == "since" else { throw GraphQueryError(description: "unknown parameter \"\(name)\"; /v1/graph takes since=SECONDS_SINCE_EPOCH") }
            guard let seconds = Double(value), seconds.isFinite else {
                throw GraphQueryError(description: "since=\"\(value)\" is not a time in seconds since the epoch")
            }
            since = seconds
        }
        return try GraphDocument(edges: try graph.edges(since: since)).encoded()
    }
}
