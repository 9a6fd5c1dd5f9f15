import FuzzSupport
import LinuxNet

/// A sock_diag reply as the kernel sends it to the agent's exact lookup of a
/// client socket (`SockDiagMessage.parseReply`): netlink messages, then
/// `inet_diag_msg` and its attributes, the socket's cgroup id among them.
Fuzzing.run { bytes in
    do {
        let reply = try SockDiagMessage.parseReply(bytes, sequence: NetlinkInput.firstSequence(bytes))
        Fuzzing.require(reply.family == 2 || reply.family == 10, "a reply of address family \(reply.family) was accepted")
    } catch {
        _ = "\(error)"
    }
}
