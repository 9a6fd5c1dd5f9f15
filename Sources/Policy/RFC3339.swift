import Foundation

/// RFC 3339 times as Kubernetes annotations and the access log write them.
public enum RFC3339 {
    /// Seconds since the epoch, or nil when `text` is not an RFC 3339 time
    /// (with or without fractional seconds, `Z` or an offset).
    public static func parse(_ text: String) -> Double? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date.timeIntervalSince1970 }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)?.timeIntervalSince1970
    }

    /// `secondsSinceEpoch` in UTC: whole seconds (`2026-12-08T18:00:00Z`),
    /// or with milliseconds as the access log writes times.
    public static func format(_ secondsSinceEpoch: Double, milliseconds: Bool = false) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = milliseconds ? [.withInternetDateTime, .withFractionalSeconds] : [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: milliseconds ? secondsSinceEpoch : secondsSinceEpoch.rounded(.down)))
    }
}
