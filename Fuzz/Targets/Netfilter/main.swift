import FuzzSupport
import LinuxNet
@testable import Netfilter

/// An nf_tables reply as the agent reads one back (`NetlinkMessage.split`,
/// the acknowledgement and its extended-ack text, and `ReplyParser` for the
/// generation, tables, chains, sets, set elements and rules with their
/// expressions); what parses is put together as the agent's drift check puts
/// a live table together, and compared with the table the agent installs.
Fuzzing.run { bytes in
    guard let messages = try? NetlinkMessage.split(bytes, as: NetfilterError.self) else { return }
    var live = LiveTable(family: .inet, name: "mesh_agent")
    for message in messages {
        _ = try? message.acknowledgement(as: NetfilterError.self)
        _ = try? ReplyParser.generation(message)
        if let table = try? ReplyParser.table(message) {
            live.handle = table.handle
            live.comment = table.comment
        }
        if let (_, chain) = try? ReplyParser.chain(message) { live.chains.append(chain) }
        if let (_, set) = try? ReplyParser.set(message) { live.sets.append(set) }
        if let elements = try? ReplyParser.setElements(message), let index = live.sets.firstIndex(where: { $0.name == elements.set }) {
            live.sets[index].elementKeys.formUnion(elements.keys)
        }
        if let (_, chain, rule) = try? ReplyParser.rule(message, family: .inet), let index = live.chains.firstIndex(where: { $0.name == chain }) {
            live.chains[index].rules.append(rule)
        }
    }
    _ = live.description
    _ = live.table
    _ = Drift.between(desired: NetfilterTarget.desired, live: live).description
}

private enum NetfilterTarget {
    static let desired = CaptureRules.table(for: CaptureParameters(workloadCgroupLevels: [2], workloadCgroups: [2: [CgroupID(7)]]))
}
