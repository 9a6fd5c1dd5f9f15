/// How many access-log lines the agent may write (config `accessLogLimit`). A
/// flood of connections or requests must not fill the disk: lines over the
/// limit are dropped, counted, and a summary line in the log says how many.
public struct AccessLogLimit: Equatable, Sendable {
    /// Lines per second on average; 0 means no limit.
    public var linesPerSecond: UInt32
    /// Lines that may be written at once above the average, e.g. when every
    /// client reconnects after a restart.
    public var burst: UInt32

    /// A busy node writes a few thousand lines a second, and a restart storm a
    /// few seconds' worth at once; at about 400 bytes a line this bounds a
    /// flood to some 2 MB/s.
    public static let `default` = AccessLogLimit(linesPerSecond: 5_000, burst: 20_000)
    public static let unlimited = AccessLogLimit(linesPerSecond: 0, burst: 0)

    public init(linesPerSecond: UInt32, burst: UInt32) {
        self.linesPerSecond = linesPerSecond
        self.burst = burst
    }

    public var isUnlimited: Bool { linesPerSecond == 0 }
}

/// Which inspected HTTP requests the access log writes a line for (config
/// `accessLog.requests`). Connections always get theirs. Logging only refused
/// requests spares the formatting and the write of a line per allowed request,
/// the larger part of what L7 inspection costs beyond the decision itself.
public enum AccessLogRequests: String, CaseIterable, Equatable, Sendable {
    /// Every request, allowed or refused (the default, as before the setting existed).
    case all
    /// Refused requests only.
    case denied
}
