import Logging
import Metrics
import NIOConcurrencyHelpers
import TLS

/// An X.509 SVID: a workload's certificate chain and its private key, held in
/// memory only.
public struct SVID: Sendable {
    public let identity: SpiffeID
    /// Leaf first, then the intermediates a peer needs.
    public let chain: [Certificate]
    public let key: PrivateKey
    /// When the agent got it (seconds since the epoch); rotation is scheduled from here.
    public let issuedAt: Int64
    public let renewAt: Int64

    public var leaf: Certificate { chain[0] }
}

/// Keeps one current SVID for every identity the node speaks for: issues it when
/// the workload appears, re-issues it at half its lifetime (plus jitter, so a
/// node's certificates do not all renew at once) and right after the trust
/// bundle changes, and forgets it when the workload goes. Keys never touch disk.
///
/// Driven by `tick()` from the agent's control loop; a failed issuance is retried
/// with backoff and the previous certificate stays in use while it is valid.
public final class SVIDManager: Sendable {
    public enum State: String, Sendable {
        /// Valid now.
        case valid
        /// Past its notAfter: the last renewal attempts failed.
        case expired
        /// Never issued yet (first attempt failed and is being retried).
        case pending
    }

    public struct Status: Sendable, Equatable {
        public let identity: SpiffeID
        public let serial: String?
        public let notBefore: Int64?
        public let notAfter: Int64?
        public let renewAt: Int64?
        public let state: State
        public let lastError: String?
    }

    private struct Entry {
        var svid: SVID?
        var nextAttempt: Int64
        var failures = 0
        var lastError: String?
    }

    private let issuer: NIOLockedValueBox<any SVIDIssuer>
    private let lifetime: Duration
    private let logger: Logger
    private let clock: @Sendable () -> Int64
    private let jitter: @Sendable (Int64) -> Int64
    private let entries = NIOLockedValueBox<[SpiffeID: Entry]>([:])
    private let issued = Counter(label: "mesh_agent_svid_issued_total")
    private let failed = Counter(label: "mesh_agent_svid_issue_failures_total")

    /// - Parameters:
    ///   - jitter: given the lifetime in seconds, how many seconds past half-life
    ///     to renew; defaults to a random tenth of the lifetime.
    public init(
        issuer: any SVIDIssuer,
        lifetime: Duration,
        logger: Logger,
        clock: @escaping @Sendable () -> Int64 = { Int64(time(nil)) },
        jitter: @escaping @Sendable (Int64) -> Int64 = { lifetime in Int64.random(in: 0...max(0, lifetime / 10)) }
    ) {
        self.issuer = NIOLockedValueBox(issuer)
        self.lifetime = lifetime
        self.logger = logger
        self.clock = clock
        self.jitter = jitter
    }

    /// The identities to hold SVIDs for. New ones are issued at once; SVIDs of
    /// identities no longer listed are dropped.
    public func setIdentities(_ identities: Set<SpiffeID>) {
        let now = clock()
        let added = entries.withLockedValue { entries -> [SpiffeID] in
            for gone in entries.keys where !identities.contains(gone) {
                entries[gone] = nil
            }
            let added = identities.filter { entries[$0] == nil }
            for identity in added {
                entries[identity] = Entry(svid: nil, nextAttempt: now)
            }
            return Array(added)
        }
        if !added.isEmpty { tick() }
    }

    /// The issuer changed (e.g. a new intermediate) or the trust bundle did:
    /// every SVID is re-issued now.
    public func renewAll(issuer newIssuer: (any SVIDIssuer)? = nil, because reason: String) {
        if let newIssuer { issuer.withLockedValue { $0 = newIssuer } }
        let now = clock()
        entries.withLockedValue { entries in
            for identity in entries.keys { entries[identity]?.nextAttempt = now }
        }
        logger.info("re-issuing all workload certificates: \(reason)")
        tick()
    }

    /// Whether `candidate` signs with another certificate than the current issuer.
    public func issuerCertificateChanged(to candidate: any SVIDIssuer) -> Bool {
        issuer.withLockedValue { $0.signingCertificate } != candidate.signingCertificate
    }

    /// Issues what is due. Cheap when nothing is.
    public func tick() {
        let now = clock()
        let due = entries.withLockedValue { entries in
            entries.filter { $0.value.nextAttempt <= now }.map(\.key)
        }
        let currentIssuer = issuer.withLockedValue { $0 }
        let lifetimeSeconds = max(1, lifetime.components.seconds)
        for identity in due.sorted() {
            do {
                let key = try PrivateKey.generateP256()
                let chain = try currentIssuer.issue(identity: identity, key: key, lifetime: lifetime)
                let renewAt = now + lifetimeSeconds / 2 + jitter(lifetimeSeconds)
                let svid = SVID(identity: identity, chain: chain, key: key, issuedAt: now, renewAt: renewAt)
                let stillWanted = entries.withLockedValue { entries -> Bool in
                    guard entries[identity] != nil else { return false }
                    entries[identity] = Entry(svid: svid, nextAttempt: renewAt)
                    return true
                }
                if stillWanted {
                    issued.increment()
                    logger.info("issued certificate for \(identity): serial \(svid.leaf.serialNumberHex), valid until \(Certificate.formatTime(svid.leaf.notAfter)), renews at \(Certificate.formatTime(renewAt))")
                }
            } catch {
                failed.increment()
                entries.withLockedValue { entries in
                    guard var entry = entries[identity] else { return }
                    entry.failures += 1
                    // 1 s, 2 s, 4 s … capped at a minute.
                    entry.nextAttempt = now + min(Int64(1) << Int64(min(entry.failures - 1, 6)), 60)
                    entry.lastError = "\(error)"
                    entries[identity] = entry
                }
                logger.error("cannot issue a certificate for \(identity): \(error); retrying")
            }
        }
    }

    /// The current SVID of `identity`, if it has one that is valid now.
    public func svid(for identity: SpiffeID) -> SVID? {
        let now = clock()
        return entries.withLockedValue { $0[identity]?.svid }.flatMap { svid in
            svid.leaf.notAfter > now ? svid : nil
        }
    }

    public func statuses() -> [Status] {
        let now = clock()
        return entries.withLockedValue { entries in
            entries.map { identity, entry in
                guard let svid = entry.svid else {
                    return Status(identity: identity, serial: nil, notBefore: nil, notAfter: nil, renewAt: nil, state: .pending, lastError: entry.lastError)
                }
                return Status(
                    identity: identity, serial: svid.leaf.serialNumberHex,
                    notBefore: svid.leaf.notBefore, notAfter: svid.leaf.notAfter, renewAt: svid.renewAt,
                    state: svid.leaf.notAfter > now ? .valid : .expired, lastError: entry.lastError
                )
            }.sorted { $0.identity < $1.identity }
        }
    }

    /// The SVID chains as PEM, for the admin API. Private keys are never included.
    public func certificatePEM(for identity: SpiffeID) -> String? {
        guard let svid = entries.withLockedValue({ $0[identity]?.svid }) else { return nil }
        return try? svid.chain.map { try $0.pemRepresentation() }.joined()
    }
}

#if canImport(Glibc)
import Glibc
#endif
