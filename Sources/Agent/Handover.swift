import Foundation
import LinuxNet
import Logging
import NIOConcurrencyHelpers
import Proxy

/// An agent taking over from a running one (an upgrade, a DaemonSet rolling
/// update with surge): the running agent hands over its listening sockets, so
/// no connection is refused between the two, and stops accepting once the new
/// one says it is ready; it then drains its own connections on SIGTERM and
/// leaves capture to the new one.
///
/// The protocol, on a Unix socket next to the admin socket (root only):
/// the new agent sends `TAKEOVER <pid>`; the running one answers `SOCKETS`
/// and one name per line, with the descriptors attached in that order; the
/// new one adopts them, installs capture, and sends `READY`. A new agent that
/// fails before `READY` changes nothing for the running one.
enum Handover {
    static func path(adminSocket: String) -> String {
        adminSocket + ".handover"
    }

    /// The new agent's side: the sockets a running agent handed over, and
    /// the connection on which it waits for `READY`.
    final class Taking: Sendable {
        let sockets: [(name: String, fd: CInt)]
        private let connection: UnixStreamSocket
        private let peer: String

        private init(connection: UnixStreamSocket, sockets: [(name: String, fd: CInt)], peer: String) {
            self.connection = connection
            self.sockets = sockets
            self.peer = peer
        }

        /// Asks the agent listening at `path` for its sockets; nil when no
        /// agent is there (the usual start) or it does not answer as it should.
        static func request(path: String, logger: Logger) -> Taking? {
            guard let connection = UnixStreamSocket.connect(to: path, timeout: 30) else { return nil }
            do {
                try connection.send(Array("TAKEOVER \(getpid())\n".utf8))
                let (bytes, descriptors) = try connection.receive()
                let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").map(String.init)
                guard lines.first == "SOCKETS", lines.count - 1 == descriptors.count else {
                    for fd in descriptors { close(fd) }
                    throw HandoverError.unexpectedAnswer(String(decoding: bytes.prefix(80), as: UTF8.self))
                }
                let sockets = Array(zip(lines.dropFirst(), descriptors)).map { (name: $0.0, fd: $0.1) }
                logger.info("taking over from the agent at \(path): \(sockets.count) listening socket(s) handed over")
                return Taking(connection: connection, sockets: sockets, peer: path)
            } catch {
                logger.warning("an agent answers at \(path) but did not hand its sockets over (\(error)); starting without them")
                return nil
            }
        }

        /// Tells the agent handing over that this one serves now.
        func confirmReady(logger: Logger) {
            do {
                try connection.send(Array("READY\n".utf8))
                logger.info("told the agent at \(peer) that this one serves now; it stops accepting and drains")
            } catch {
                logger.warning("cannot tell the agent at \(peer) that this one is ready (\(error)); it keeps accepting until it is stopped")
            }
        }
    }

    /// The running agent's side: answers one taker at a time, on a thread of
    /// its own (blocking I/O, never an event loop).
    final class Giving: Sendable {
        private let path: String
        /// Every listening socket to hand over, the node's and the pods', by name.
        private let sockets: @Sendable () -> [(name: String, fd: CInt)]
        private let logger: Logger
        private let prepare: @Sendable () throws -> Void
        private let abandoned: @Sendable () -> Void
        private let superseded: @Sendable (_ by: Int32) -> Void
        private let listening = NIOLockedValueBox<UnixStreamSocket?>(nil)

        /// - Parameters:
        ///   - prepare: stops this agent accepting, before the sockets go;
        ///   - abandoned: called when a taker that got the sockets did not become ready;
        ///   - superseded: called once a taker said it is ready.
        init(
            path: String, sockets: @escaping @Sendable () -> [(name: String, fd: CInt)], logger: Logger, prepare: @escaping @Sendable () throws -> Void,
            abandoned: @escaping @Sendable () -> Void, superseded: @escaping @Sendable (_ by: Int32) -> Void
        ) {
            self.path = path
            self.sockets = sockets
            self.logger = logger
            self.prepare = prepare
            self.abandoned = abandoned
            self.superseded = superseded
        }

        func start() throws {
            let socket = try UnixStreamSocket.listen(at: path)
            listening.withLockedValue { $0 = socket }
            let thread = Thread { [self] in serve(socket) }
            thread.name = "mesh-agent handover"
            thread.start()
        }

        func stop() {
            // Wakes the thread's accept, which then ends the loop.
            listening.withLockedValue { socket in defer { socket = nil }; return socket }?.shutdown()
        }

        private func serve(_ socket: UnixStreamSocket) {
            while let taker = socket.accept() {
                taker.setReceiveTimeout(seconds: 120)
                if let pid = handOver(to: taker) {
                    superseded(pid)
                    return
                }
            }
        }

        /// One taker: its request, our sockets, its `READY`. Returns the
        /// taker's pid once it is ready.
        private func handOver(to taker: UnixStreamSocket) -> Int32? {
            do {
                let (request, _) = try taker.receive(capacity: 256)
                let words = String(decoding: request, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" })
                guard words.count == 2, words[0] == "TAKEOVER", let pid = Int32(words[1]) else {
                    logger.warning("handover socket \(path): not a takeover request; ignored")
                    return nil
                }
                try prepare()
                do {
                    let held = sockets()
                    let names = (["SOCKETS"] + held.map(\.name)).joined(separator: "\n") + "\n"
                    try taker.send(Array(names.utf8), descriptors: held.map(\.fd))
                    logger.info("handed \(held.count) listening socket(s) to the agent with pid \(pid); waiting for it to be ready")
                    let (answer, _) = try taker.receive(capacity: 64)
                    guard String(decoding: answer, as: UTF8.self) == "READY\n" else {
                        throw HandoverError.unexpectedAnswer(String(decoding: answer.prefix(80), as: UTF8.self))
                    }
                } catch {
                    logger.warning("the agent with pid \(pid) did not become ready (\(error)); this one accepts again")
                    abandoned()
                    return nil
                }
                return pid
            } catch {
                logger.warning("handover on \(path) failed: \(error); this agent keeps serving")
                return nil
            }
        }
    }
}

enum HandoverError: Error, CustomStringConvertible {
    case unexpectedAnswer(String)

    var description: String {
        switch self {
        case .unexpectedAnswer(let text):
            return "unexpected answer \"\(text)\""
        }
    }
}
