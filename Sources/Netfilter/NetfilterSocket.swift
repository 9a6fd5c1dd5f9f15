import CNetlink
import Glibc
import LinuxNet

/// The client's NETLINK_NETFILTER socket, the sequence numbers of its messages,
/// and what it learned about the kernel. Not thread-safe: ``NetfilterClient``
/// serializes use.
final class NetfilterSocket {
    /// How long to wait for the kernel. Replies to a batch are queued before the
    /// send returns, so this is only reached when something is badly wrong.
    static let replyTimeout = Duration.seconds(5)
    /// Once the kernel refused one message of a batch, the answers to the others
    /// are queued already: wait only this long for more.
    static let afterRefusal = Duration.milliseconds(50)

    private let netlink: NetlinkSocket<NetfilterError>
    private var sequence: UInt32
    /// Whether the kernel accepts NFT_MSG_DESTROYSETELEM (Linux 6.3+); learned on use.
    var supportsDestroy = true

    /// Opens the socket inside `namespace` when given (it keeps that namespace
    /// whichever thread uses it later), else in the caller's.
    init(namespace: NetworkNamespace?) throws {
        netlink = try NetlinkSocket(
            protocol: NETLINK_NETFILTER, name: "NETLINK_NETFILTER", namespace: namespace,
            options: .init(
                receiveBufferSize: 1 << 17,
                // Room for large batches and their acknowledgements.
                kernelBufferSize: 4 << 20,
                // The kernel's reason for a refusal goes into the error.
                extendedAcknowledgements: true))
        sequence = UInt32(truncatingIfNeeded: time(nil))
    }

    func nextSequence() -> UInt32 {
        sequence &+= 1
        if sequence == 0 { sequence = 1 }
        return sequence
    }

    /// Sends a batch and reads one acknowledgement per message. Returns the
    /// kernel's refusal of the earliest refused message (nil: all was applied);
    /// throws when an acknowledgement is missing or the socket fails.
    func send(_ batch: BatchBuilder) throws(NetfilterError) -> BatchRefusal? {
        guard !batch.isEmpty else { return nil }
        let datagram = try batch.finish()
        let messages = batch.messages
        let reply = try netlink.sendBatch(
            datagram, sequences: Set(messages.keys), awaited: batch.acknowledged, timeout: Self.replyTimeout,
            afterRefusal: Self.afterRefusal)
        func position(_ sequence: UInt32) -> Int { messages[sequence]?.position ?? 0 }
        if let (sequence, answer) = reply.refusals.min(by: { position($0.key) < position($1.key) }) {
            let message = messages[sequence]
            return BatchRefusal(messageType: message?.type, error: .refused(message?.operation ?? "a message", answer))
        }
        if let missing = reply.unacknowledged.min(by: { position($0) < position($1) }) {
            throw .noAcknowledgement(operation: messages[missing]?.operation ?? "a message")
        }
        return nil
    }

    /// Sends a batch; throws the kernel's refusal of its earliest refused message.
    func commit(_ batch: BatchBuilder) throws(NetfilterError) {
        if let refusal = try send(batch) { throw refusal.error }
    }

    /// Sends one request (a dump with NLM_F_DUMP, else a get with NLM_F_ACK) and
    /// returns the data messages of the reply.
    func request(_ type: UInt32, family: UInt8, dump: Bool, operation: String, payload: NftnlPayload? = nil) throws(NetfilterError)
        -> [NetlinkMessage]
    {
        let sequence = nextSequence()
        let message = try NftnlEncoder().message(type, family: family, flags: dump ? NLM_F_DUMP : NLM_F_ACK, sequence: sequence, payload: payload)
        switch try netlink.request(message, sequence: sequence, timeout: Self.replyTimeout) {
        case .complete(let messages): return messages
        case .refused(let answer): throw .refused(operation, answer)
        case .interrupted: throw .inconsistentDump
        case .timedOut: throw .noAcknowledgement(operation: operation)
        }
    }
}

/// The kernel's refusal of one message of a batch: the whole batch was aborted.
struct BatchRefusal {
    /// The refused message's NFT_MSG_* type (nil for the batch's begin or end).
    let messageType: UInt32?
    let error: NetfilterError
}

/// Builds one netlink batch (a transaction) message by message.
final class BatchBuilder {
    static let elementsPerMessage = 1000

    /// One message of the batch, for matching the kernel's answers to it.
    struct Message {
        /// What the message does, for error reports.
        let operation: String
        /// Its place in the batch.
        let position: Int
        /// Its NFT_MSG_* type; nil for the batch's begin and end.
        let type: UInt32?
    }

    /// The batch's messages by sequence number.
    private(set) var messages: [UInt32: Message] = [:]
    private var data: [UInt8] = []
    private let socket: NetfilterSocket
    private let encoder = NftnlEncoder()

    init(socket: NetfilterSocket) throws(NetfilterError) {
        self.socket = socket
        let sequence = socket.nextSequence()
        messages[sequence] = Message(operation: "the start of the transaction", position: 0, type: nil)
        data = try encoder.batchBegin(sequence: sequence)
    }

    /// Whether the batch has nothing between its begin and its end.
    var isEmpty: Bool { messages.count == 1 }

    /// The messages that ask for an acknowledgement: all but the begin and end.
    var acknowledged: Set<UInt32> { Set(messages.filter { $0.value.type != nil }.keys) }

    /// Adds one nf_tables message (`type` is an NFT_MSG_* number) that is acknowledged.
    func add(_ type: UInt32, family: NFT.Family, flags: Int32, operation: String, payload: NftnlPayload) throws(NetfilterError) {
        let sequence = socket.nextSequence()
        data += try encoder.message(type, family: family.protocolNumber, flags: flags | NLM_F_ACK, sequence: sequence, payload: payload)
        messages[sequence] = Message(operation: operation, position: messages.count, type: type)
    }

    /// Closes the batch and returns the bytes to send.
    func finish() throws(NetfilterError) -> [UInt8] {
        let sequence = socket.nextSequence()
        messages[sequence] = Message(operation: "the end of the transaction", position: messages.count, type: nil)
        return data + (try encoder.batchEnd(sequence: sequence))
    }
}

/// nf_tables message types (NFT_MSG_*), including those newer than the headers.
enum MessageType {
    static let newTable = NFT_MSG_NEWTABLE.rawValue
    static let getTable = NFT_MSG_GETTABLE.rawValue
    static let delTable = NFT_MSG_DELTABLE.rawValue
    static let newChain = NFT_MSG_NEWCHAIN.rawValue
    static let getChain = NFT_MSG_GETCHAIN.rawValue
    static let newRule = NFT_MSG_NEWRULE.rawValue
    static let getRule = NFT_MSG_GETRULE.rawValue
    static let newSet = NFT_MSG_NEWSET.rawValue
    static let getSet = NFT_MSG_GETSET.rawValue
    static let newSetElement = NFT_MSG_NEWSETELEM.rawValue
    static let getSetElement = NFT_MSG_GETSETELEM.rawValue
    static let delSetElement = NFT_MSG_DELSETELEM.rawValue
    static let getGeneration = NFT_MSG_GETGEN.rawValue
    /// NFT_MSG_DESTROYSETELEM (Linux 6.3+): delete, ignoring absent elements. Not in
    /// the installed (6.1) uapi headers.
    static let destroySetElement: UInt32 = 30

    /// The nf_tables subsystem in the high byte of nlmsg_type.
    static let subsystem: UInt16 = 10 << 8  // NFNL_SUBSYS_NFTABLES
}
