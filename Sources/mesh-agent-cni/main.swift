import CNI

/// `mesh-agent-cni`: run by a container runtime for each pod, with the CNI_*
/// environment and the network config on stdin. The decisions are
/// `CNIPlugin`'s; this only reads, asks the agent, prints and exits.
/// stdout carries the CNI result and nothing else; logs go to stderr.
///
/// Run with arguments and without CNI_COMMAND, it is the installer
/// (`mesh-agent-cni install`): runtimes pass no arguments.
let environment = POSIX.environment()
if environment["CNI_COMMAND"] == nil, CommandLine.arguments.count > 1 {
    Installer.run(Array(CommandLine.arguments.dropFirst()))
}

let stdin: [UInt8]
switch POSIX.readStandardInput(limit: NetworkConfig.maximumSize + 1) {
case .success(let bytes):
    stdin = bytes
case .failure(let error):
    POSIX.finish(PluginOutput(
        stdout: CNIError(.ioFailure, "reading the network config from stdin failed", details: error.reason).result(cniVersion: CNIVersion.fallback.description),
        exitCode: 1, log: ["reading stdin failed: \(error.reason)"]))
}

switch CNIPlugin.plan(environment: environment, stdin: stdin) {
case .finish(let output):
    POSIX.finish(output)
case .askAgent(let call):
    let exchange = POSIX.exchange(
        socketPath: call.socketPath, request: call.request?.encoded(), timeoutMilliseconds: call.timeoutMilliseconds,
        responseLimit: EnrollmentProtocol.maximumResponseSize)
    POSIX.finish(call.finish(exchange))
}
