import FuzzSupport
import LinuxNet

/// A ctnetlink reply to the agent's lookup of a NATed connection
/// (`ConntrackMessage.parseReply`): the entry, then the acknowledgement, as
/// one datagram and as one datagram per message.
Fuzzing.run { bytes in
    let sequence = NetlinkInput.firstSequence(bytes)
    for datagrams in [[bytes], NetlinkInput.datagrams(bytes)] {
        do {
            let tuple = try ConntrackMessage.parseReply(datagrams, sequence: sequence)
            Fuzzing.require(tuple.source.protocol == tuple.destination.protocol, "an original tuple mixes address families: \(tuple)")
        } catch {
            _ = "\(error)"
        }
    }
}
