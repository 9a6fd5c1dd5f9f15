import Testing
@testable import Config

@Suite struct AccessLogLimitConfigTests {
    @Test func theLimitDefaultsToAFewThousandLinesASecond() throws {
        let config = try AgentConfig.parse("trustDomain: td\n", file: "agent.yaml")
        #expect(config.accessLogLimit == .default)
        #expect(config.accessLogLimit == AccessLogLimit(linesPerSecond: 5_000, burst: 20_000))
    }

    @Test func bothKeysAreRead() throws {
        let config = try AgentConfig.parse("trustDomain: td\naccessLogLimit: {linesPerSecond: 2000, burst: 10000}\n", file: "agent.yaml")
        #expect(config.accessLogLimit == AccessLogLimit(linesPerSecond: 2_000, burst: 10_000))
    }

    @Test func aKeyLeftOutKeepsItsDefault() throws {
        let rate = try AgentConfig.parse("trustDomain: td\naccessLogLimit:\n  linesPerSecond: 800\n", file: "agent.yaml")
        #expect(rate.accessLogLimit == AccessLogLimit(linesPerSecond: 800, burst: 20_000))
        let burst = try AgentConfig.parse("trustDomain: td\naccessLogLimit: {burst: 4}\n", file: "agent.yaml")
        #expect(burst.accessLogLimit == AccessLogLimit(linesPerSecond: 5_000, burst: 4))
    }

    @Test func zeroLinesPerSecondMeansUnlimited() throws {
        let config = try AgentConfig.parse("trustDomain: td\naccessLogLimit: {linesPerSecond: 0}\n", file: "agent.yaml")
        #expect(config.accessLogLimit.isUnlimited)
    }

    @Test func theAccessLogIsAPathOrAMappingWithWhichRequestsToLog() throws {
        let plain = try AgentConfig.parse("trustDomain: td\naccessLog: /var/log/a.log\n", file: "agent.yaml")
        #expect(plain.accessLog == "/var/log/a.log")
        #expect(plain.accessLogRequests == .all, "every request, as before the setting existed")
        let mapped = try AgentConfig.parse("trustDomain: td\naccessLog: {path: \"-\", requests: denied}\n", file: "agent.yaml")
        #expect(mapped.accessLog == "-")
        #expect(mapped.accessLogRequests == .denied)
        let onlyRequests = try AgentConfig.parse("trustDomain: td\naccessLog:\n  requests: all\n", file: "agent.yaml")
        #expect(onlyRequests.accessLog == "/var/log/mesh-agent/access.log", "the path keeps its default")
    }

    /// Each bad value fails with the file, the line and the key path.
    @Test(arguments: [
        ("accessLogLimit: {linesPerSecond: -1}\n", "agent.yaml:2: accessLogLimit.linesPerSecond: expected a whole number from 0 to 1000000, got \"-1\""),
        ("accessLogLimit: {linesPerSecond: 2000000}\n", "agent.yaml:2: accessLogLimit.linesPerSecond: must be between 0 and 1000000, got 2000000"),
        ("accessLogLimit: {linesPerSecond: fast}\n", "agent.yaml:2: accessLogLimit.linesPerSecond: expected a whole number"),
        ("accessLogLimit:\n  linesPerSecond: 100\n  burst: 3\n", "agent.yaml:4: accessLogLimit.burst: must be between 4 and 10000000, got 3"),
        ("accessLogLimit: {burst: 0}\n", "agent.yaml:2: accessLogLimit.burst: must be between 4 and 10000000, got 0"),
        ("accessLogLimit: {burst: 20000000}\n", "agent.yaml:2: accessLogLimit.burst: must be between 4 and 10000000"),
        ("accessLogLimit:\n  linesPerSecond: 100\n  lines: 5\n", "agent.yaml:4: accessLogLimit.lines: unknown key; expected one of: burst, linesPerSecond"),
        ("accessLogLimit: 2000\n", "agent.yaml:2: accessLogLimit: expected a mapping of keys to values"),
        ("accessLogLimit:\n", "agent.yaml:2: accessLogLimit: expected a mapping of keys to values"),
        ("accesslogLimit: {burst: 10}\n", "agent.yaml:2: accesslogLimit: unknown key"),
        ("accessLog: {requests: allowed}\n", "agent.yaml:2: accessLog.requests: "),
        ("accessLog: {path: relative.log}\n", "agent.yaml:2: accessLog.path: "),
        ("accessLog: {file: /var/log/a.log}\n", "agent.yaml:2: accessLog.file: unknown key; expected one of: path, requests"),
    ])
    func badValuesAreRefusedWithTheirLine(text: String, expected: String) {
        do {
            _ = try AgentConfig.parse("trustDomain: td\n" + text, file: "agent.yaml")
            Issue.record("accepted \(text.debugDescription)")
        } catch {
            #expect("\(error)".hasPrefix(expected), "\(error)")
        }
    }
}
