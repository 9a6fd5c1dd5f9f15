import CNetlink
import Glibc
import LinuxNet
import Synchronization

/// Talks to nf_tables over one NETLINK_NETFILTER socket, in the network namespace
/// the client was created for.
///
/// Every change is one netlink batch, which the kernel applies atomically: either
/// every message of it takes effect or none does. The socket is guarded by a lock,
/// so one client can be shared between tasks; calls block the calling thread for
/// the round trip to the kernel (microseconds to milliseconds).
public final class NetfilterClient: Sendable {
    /// The namespace the socket lives in (nil: the one the client was created in).
    public let namespace: NetworkNamespace?
    private let socket: Mutex<NetfilterSocket>

    /// Opens the socket, inside `namespace` when given (the socket is created on a
    /// thread that entered the namespace and keeps it afterwards), and checks that
    /// nf_tables answers.
    public init(namespace: NetworkNamespace? = nil) throws {
        let socket = try NetfilterSocket(namespace: namespace)
        try Self.checkAvailable(socket)
        self.namespace = namespace
        self.socket = Mutex(socket)
    }

    // MARK: Changes

    /// Installs `table` in place of whatever table of that name exists, in one
    /// transaction: create the table if missing, delete it, create it again with its
    /// sets, elements, chains and rules. If the kernel refuses any message, nothing
    /// changes and the error names the message (table, set, chain or rule comment).
    public func replace(_ table: NFT.Table) throws {
        try table.validate()
        try socket.withLock { socket throws(NetfilterError) in
            let batch = try BatchBuilder(socket: socket)
            let tableName = "table \(table.family) \(table.name)"
            let reference = try NFT.Table.nftnlReference(name: table.name, family: table.family)
            try batch.add(
                MessageType.newTable, family: table.family, flags: NLM_F_CREATE, operation: "creating \(tableName) if missing",
                payload: .table(reference))
            try batch.add(MessageType.delTable, family: table.family, flags: 0, operation: "deleting the old \(tableName)", payload: .table(reference))
            try batch.add(
                MessageType.newTable, family: table.family, flags: NLM_F_CREATE, operation: "creating \(tableName)",
                payload: .table(try table.makeNftnlTable()))
            var setIDs: [String: UInt32] = [:]
            for (index, set) in table.sets.enumerated() {
                let id = UInt32(index + 1)
                setIDs[set.name] = id
                let object = try set.makeNftnlSet(table: table.name, family: table.family, id: id)
                try batch.add(
                    MessageType.newSet, family: table.family, flags: NLM_F_CREATE, operation: "creating set \(set.name) in \(tableName)",
                    payload: .set(object))
                try Self.addElementMessages(
                    to: batch, type: MessageType.newSetElement, flags: NLM_F_CREATE, keys: set.elements.sorted().map(\.keyBytes),
                    set: set.name, table: table.name, family: table.family, setID: id
                ) { "adding \(elementCount($0)) to set \(set.name) in \(tableName)" }
            }
            for chain in table.chains {
                let object = try chain.makeNftnlChain(table: table.name, family: table.family)
                try batch.add(
                    MessageType.newChain, family: table.family, flags: NLM_F_CREATE, operation: "creating chain \(chain.name) in \(tableName)",
                    payload: .chain(object))
            }
            for chain in table.chains {
                for (index, rule) in chain.rules.enumerated() {
                    let object = try rule.makeNftnlRule(table: table.name, chain: chain.name, family: table.family, setIDs: setIDs)
                    try batch.add(
                        MessageType.newRule, family: table.family, flags: NLM_F_CREATE | NLM_F_APPEND,
                        operation: "adding rule \(index + 1) (\(quoted(rule.comment))) to chain \(chain.name) in \(tableName)",
                        payload: .rule(object))
                }
            }
            try socket.commit(batch)
        }
    }

    /// Deletes a table and everything in it. Returns false if it did not exist.
    @discardableResult
    public func delete(tableNamed name: String, family: NFT.Family = .inet) throws -> Bool {
        try NFT.Table(family: family, name: name).validate()
        return try socket.withLock { socket throws(NetfilterError) -> Bool in
            let batch = try BatchBuilder(socket: socket)
            let reference = try NFT.Table.nftnlReference(name: name, family: family)
            try batch.add(MessageType.delTable, family: family, flags: 0, operation: "deleting table \(family) \(name)", payload: .table(reference))
            do throws(NetfilterError) {
                try socket.commit(batch)
                return true
            } catch .rejected(_, ENOENT, _) {
                return false
            }
        }
    }

    /// Applies changes to the elements of sets of one table in one transaction:
    /// the kernel applies all of them or, if it refuses any, none. Changes apply
    /// in order. Adding an element that is there already, or removing one that is
    /// not, is not an error; an empty list changes nothing.
    ///
    /// Removals use NFT_MSG_DESTROYSETELEM (Linux 6.3+), which deletes present
    /// elements and ignores absent ones, so the cost depends on the number of
    /// elements changed, not on the size of the sets. On older kernels (which
    /// refuse the message type with EINVAL) it falls back to reading the sets that
    /// lose elements and deleting only the elements present, which is O(set size).
    public func updateElements(_ changes: [NFT.SetElementChange], inTable table: String, family: NFT.Family = .inet) throws {
        let changes = try Self.check(changes, table: table, family: family)
        guard !changes.isEmpty else { return }
        try socket.withLock { socket throws(NetfilterError) in
            if socket.supportsDestroy {
                let batch = try Self.elementBatch(changes, table: table, family: family, socket: socket, members: nil)
                guard let refusal = try socket.send(batch) else { return }
                // Either the kernel predates DESTROYSETELEM or the keys do not fit
                // the set; the fallback below tells the two apart.
                guard refusal.messageType == MessageType.destroySetElement, refusal.error.errno == EINVAL else {
                    throw refusal.error
                }
            }
            let members = try Self.membersOfSetsLosingElements(changes, table: table, family: family, socket: socket)
            let batch = try Self.elementBatch(changes, table: table, family: family, socket: socket, members: members)
            try socket.commit(batch)
        }
    }

    /// Adds elements to a set in one transaction; elements already present are
    /// left alone. See ``updateElements(_:inTable:family:)``.
    public func addElements(_ elements: [NFT.SetElement], toSet set: String, inTable table: String, family: NFT.Family = .inet) throws {
        try updateElements([.add(elements, to: set)], inTable: table, family: family)
    }

    /// Removes elements from a set in one transaction; removing an element that is
    /// not in the set is not an error. See ``updateElements(_:inTable:family:)``.
    public func removeElements(_ elements: [NFT.SetElement], fromSet set: String, inTable table: String, family: NFT.Family = .inet) throws {
        try updateElements([.remove(elements, from: set)], inTable: table, family: family)
    }

    /// Whether element removal may use NFT_MSG_DESTROYSETELEM; tests turn it off to
    /// exercise the fallback for kernels older than 6.3.
    func useDestroySetElement(_ enabled: Bool) {
        socket.withLock { $0.supportsDestroy = enabled }
    }

    /// Whether element removal uses NFT_MSG_DESTROYSETELEM, for tests of what
    /// the client learns.
    var usesDestroySetElement: Bool {
        socket.withLock { $0.supportsDestroy }
    }

    // MARK: Reading

    /// The ruleset generation: it changes with every committed transaction.
    public func generation() throws -> UInt32 {
        try socket.withLock { socket throws(NetfilterError) -> UInt32 in try Self.generation(socket) }
    }

    /// Reads back a table with its sets (and their elements), chains and rules, or
    /// nil if it does not exist. The snapshot is consistent: it is read again if the
    /// ruleset changed while it was being read.
    public func liveTable(named name: String, family: NFT.Family = .inet) throws -> LiveTable? {
        try NFT.Table(family: family, name: name).validate()
        return try socket.withLock { socket throws(NetfilterError) -> LiveTable? in
            for _ in 0..<5 {
                do throws(NetfilterError) {
                    let before = try Self.generation(socket)
                    guard var table = try Self.readTable(named: name, family: family, socket: socket) else { return nil }
                    let after = try Self.generation(socket)
                    if before == after {
                        table.generation = after
                        return table
                    }
                } catch .inconsistentDump {
                    continue
                }
            }
            throw .inconsistentDump
        }
    }

    /// Compares the live table with `desired`.
    public func drift(desired: NFT.Table) throws -> Drift {
        try desired.validate()
        guard let live = try liveTable(named: desired.name, family: desired.family) else { return .missing }
        return Drift.between(desired: desired, live: live)
    }

    // MARK: - Internals

    /// Asks for the ruleset generation: the cheapest request that needs nf_tables
    /// and CAP_NET_ADMIN.
    private static func checkAvailable(_ socket: NetfilterSocket) throws(NetfilterError) {
        do {
            _ = try generation(socket)
        } catch {
            guard case .rejected(_, let code, let message) = error,
                [EINVAL, EOPNOTSUPP, ENOENT, EPROTONOSUPPORT, EAFNOSUPPORT].contains(code)
            else { throw error }
            throw .unavailable(detail: "the ruleset generation request failed with \(errnoText(code))\(message.map { ": \($0)" } ?? "")")
        }
    }

    /// One change to a set, checked and ready to encode.
    private struct CheckedChange {
        let set: String
        let action: NFT.SetElementChange.Action
        let keyType: NFT.SetKeyType
        /// The elements' keys, without repeats, in a stable order.
        let keys: [[UInt8]]
    }

    /// Checks element changes before anything is sent and drops those without
    /// elements (nothing to do).
    private static func check(_ changes: [NFT.SetElementChange], table: String, family: NFT.Family) throws(NetfilterError) -> [CheckedChange] {
        var names: [String] = []
        for change in changes where !names.contains(change.set) { names.append(change.set) }
        try NFT.Table(family: family, name: table, sets: names.map { NFT.NamedSet(name: $0, keyType: .cgroupsv2) }).validate()
        var checked: [CheckedChange] = []
        for change in changes {
            guard let first = change.elements.first else { continue }
            if let other = change.elements.first(where: { $0.keyType != first.keyType }) {
                throw .invalidRuleset("elements for set \(change.set) mix \(first.keyType) and \(other.keyType) keys")
            }
            let keys = Set(change.elements).sorted().map(\.keyBytes)
            checked.append(CheckedChange(set: change.set, action: change.action, keyType: first.keyType, keys: keys))
        }
        return checked
    }

    /// The keys in each set that `changes` remove elements from, after checking
    /// that those sets exist and that the removed keys fit them: the kernel
    /// answers EINVAL both to a DESTROYSETELEM it does not know and to keys that
    /// do not fit, and only the former may turn DESTROYSETELEM off.
    private static func membersOfSetsLosingElements(
        _ changes: [CheckedChange], table: String, family: NFT.Family, socket: NetfilterSocket
    ) throws(NetfilterError) -> [String: Set<[UInt8]>] {
        var keyLengths: [String: UInt32] = [:]
        for removal in changes where removal.action == .remove {
            let keyLength: UInt32
            if let known = keyLengths[removal.set] {
                keyLength = known
            } else {
                guard let info = try set(named: removal.set, table: table, family: family, socket: socket) else {
                    throw .rejected(
                        operation: removingDescription(removal.keys.count, removal.set, table, family), errno: ENOENT, kernelMessage: nil)
                }
                keyLength = info.keyLength
                keyLengths[removal.set] = keyLength
            }
            guard keyLength == UInt32(removal.keyType.keyLength) else {
                throw .invalidRuleset(
                    "set \(removal.set) in table \(family) \(table) has \(keyLength)-byte keys, not \(removal.keyType.keyLength)-byte \(removal.keyType) elements"
                )
            }
        }
        socket.supportsDestroy = false
        var members: [String: Set<[UInt8]>] = [:]
        for set in keyLengths.keys {
            members[set] = try elementKeys(of: set, table: table, family: family, socket: socket)
        }
        return members
    }

    /// The batch for element changes. Removals are DESTROYSETELEM messages when
    /// `members` is nil. Otherwise `members` holds each removal set's keys before
    /// the batch, and removals are DELSETELEM messages for only the keys present
    /// at that point of the batch, as deleting an absent element aborts it.
    private static func elementBatch(
        _ changes: [CheckedChange], table: String, family: NFT.Family, socket: NetfilterSocket, members: [String: Set<[UInt8]>]?
    ) throws(NetfilterError) -> BatchBuilder {
        let batch = try BatchBuilder(socket: socket)
        var members = members
        for change in changes {
            switch change.action {
            case .add:
                try addElementMessages(
                    to: batch, type: MessageType.newSetElement, flags: NLM_F_CREATE, keys: change.keys, set: change.set, table: table,
                    family: family, setID: nil
                ) { "adding \(elementCount($0)) to set \(change.set) in table \(family) \(table)" }
                members?[change.set]?.formUnion(change.keys)
            case .remove:
                var type = MessageType.destroySetElement
                var keys = change.keys
                if let present = members?[change.set] {
                    type = MessageType.delSetElement
                    keys = keys.filter { present.contains($0) }
                    members?[change.set]?.subtract(keys)
                }
                try addElementMessages(
                    to: batch, type: type, flags: 0, keys: keys, set: change.set, table: table, family: family, setID: nil
                ) { removingDescription($0, change.set, table, family) }
            }
        }
        return batch
    }

    private static func addElementMessages(
        to batch: BatchBuilder, type: UInt32, flags: Int32, keys: [[UInt8]], set: String, table: String, family: NFT.Family, setID: UInt32?,
        describe: (Int) -> String
    ) throws(NetfilterError) {
        var start = 0
        while start < keys.count {
            let chunk = Array(keys[start..<min(start + BatchBuilder.elementsPerMessage, keys.count)])
            start += chunk.count
            let object = try NFT.NamedSet.nftnlReference(name: set, table: table, family: family, id: setID)
            try object.add(keys: chunk)
            try batch.add(type, family: family, flags: flags, operation: describe(chunk.count), payload: .setElements(object))
        }
    }

    private static func nftMessageType(_ message: NetlinkMessage) -> UInt32? {
        guard message.type & 0xff00 == MessageType.subsystem else { return nil }
        return UInt32(message.type & 0xff)
    }

    private static func generation(_ socket: NetfilterSocket) throws(NetfilterError) -> UInt32 {
        let replies = try socket.request(MessageType.getGeneration, family: 0, dump: false, operation: "reading the ruleset generation")
        guard let reply = replies.first(where: { nftMessageType($0) == NFT_MSG_NEWGEN.rawValue }) else {
            throw .malformedReply("no generation in the reply to NFT_MSG_GETGEN")
        }
        return try ReplyParser.generation(reply)
    }

    private static func readTable(named name: String, family: NFT.Family, socket: NetfilterSocket) throws(NetfilterError) -> LiveTable? {
        let tableName = "table \(family) \(name)"
        let nfproto = family.protocolNumber
        let reference = try NFT.Table.nftnlReference(name: name, family: family)
        let replies: [NetlinkMessage]
        do throws(NetfilterError) {
            replies = try socket.request(
                MessageType.getTable, family: nfproto, dump: false, operation: "reading \(tableName)", payload: .table(reference))
        } catch .rejected(_, ENOENT, _) {
            return nil
        }
        guard let reply = replies.first(where: { nftMessageType($0) == MessageType.newTable }) else {
            throw .malformedReply("no table in the reply to reading \(tableName)")
        }
        let parsed = try ReplyParser.table(reply)
        guard parsed.name == name else { throw .malformedReply("asked for \(tableName), got table \(parsed.name)") }
        var table = LiveTable(family: family, name: name, handle: parsed.handle, comment: parsed.comment)

        // Sets, with their elements.
        let setReplies = try socket.request(
            MessageType.getSet, family: nfproto, dump: true, operation: "listing the sets of \(tableName)", payload: .table(reference))
        for reply in setReplies where nftMessageType(reply) == MessageType.newSet {
            var (setTable, set) = try ReplyParser.set(reply)
            guard setTable == name else { continue }
            set.elementKeys = try elementKeys(of: set.name, table: name, family: family, socket: socket)
            table.sets.append(set)
        }

        // Chains, then their rules in order.
        let chainReplies = try socket.request(MessageType.getChain, family: nfproto, dump: true, operation: "listing the chains of \(tableName)")
        for reply in chainReplies where nftMessageType(reply) == MessageType.newChain {
            let (chainTable, chain) = try ReplyParser.chain(reply)
            if chainTable == name { table.chains.append(chain) }
        }
        let ruleReference = try NftnlRule()
        _ = nftnl_rule_set_str(ruleReference.pointer, attribute(NFTNL_RULE_TABLE), name)
        let ruleReplies = try socket.request(
            MessageType.getRule, family: nfproto, dump: true, operation: "listing the rules of \(tableName)", payload: .rule(ruleReference))
        for reply in ruleReplies where nftMessageType(reply) == MessageType.newRule {
            let (ruleTable, chain, rule) = try ReplyParser.rule(reply, family: family)
            guard ruleTable == name else { continue }
            guard let index = table.chains.firstIndex(where: { $0.name == chain }) else { throw .inconsistentDump }
            table.chains[index].rules.append(rule)
        }
        return table
    }

    private static func set(named name: String, table: String, family: NFT.Family, socket: NetfilterSocket) throws(NetfilterError) -> LiveSet? {
        let reference = try NFT.NamedSet.nftnlReference(name: name, table: table, family: family)
        let replies: [NetlinkMessage]
        do throws(NetfilterError) {
            replies = try socket.request(
                MessageType.getSet, family: family.protocolNumber, dump: false, operation: "reading set \(name) in table \(family) \(table)",
                payload: .set(reference))
        } catch .rejected(_, ENOENT, _) {
            return nil
        }
        for reply in replies where nftMessageType(reply) == MessageType.newSet {
            let (setTable, set) = try ReplyParser.set(reply)
            if setTable == table, set.name == name { return set }
        }
        return nil
    }

    private static func elementKeys(of set: String, table: String, family: NFT.Family, socket: NetfilterSocket) throws(NetfilterError) -> Set<[UInt8]> {
        let reference = try NFT.NamedSet.nftnlReference(name: set, table: table, family: family)
        let replies = try socket.request(
            MessageType.getSetElement, family: family.protocolNumber, dump: true,
            operation: "listing the elements of set \(set) in table \(family) \(table)", payload: .setElements(reference))
        var keys = Set<[UInt8]>()
        for reply in replies where nftMessageType(reply) == MessageType.newSetElement {
            let parsed = try ReplyParser.setElements(reply)
            guard parsed.table == table, parsed.set == set else { continue }
            keys.formUnion(parsed.keys)
        }
        return keys
    }
}

private func removingDescription(_ count: Int, _ set: String, _ table: String, _ family: NFT.Family) -> String {
    "removing \(elementCount(count)) from set \(set) in table \(family) \(table)"
}

private func elementCount(_ count: Int) -> String {
    count == 1 ? "1 element" : "\(count) elements"
}
