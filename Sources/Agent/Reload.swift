import AdminAPI
import Config
import Policy

/// SIGHUP and `agentctl reload`: the config file and the policies read again
/// and applied in place. A config that fails validation is refused whole and
/// the running one stays; settings that need new sockets or a new table take
/// effect on restart, and the outcome says which.
extension ControlLoop {
    mutating func reload() -> ReloadOutcome {
        services.notify(["RELOADING=1", "STATUS=reloading \(services.configPath)"])
        defer {
            services.notify(["READY=1", "STATUS=ready: \(services.registry.members.count) workload(s), reloaded"])
        }
        let file: AgentConfig
        do {
            file = try AgentConfig.load(path: services.configPath)
        } catch {
            logger.error("reload refused, the running configuration stays in force: \(error)")
            return outcome(config: "refused", errors: [String(describing: error)], restartRequired: [])
        }
        let restartRequired = Self.restartOnlyChanges(from: config, to: file)
        if !restartRequired.isEmpty {
            logger.warning("reload: \(restartRequired.joined(separator: ", ")) changed; these take effect on restart, the running values stay")
        }
        let previousLimit = config.accessLogLimit
        config.workloads = file.workloads
        config.failureMode = file.failureMode
        config.drainTimeout = file.drainTimeout
        config.accessLogLimit = file.accessLogLimit
        config.accessLogRequests = file.accessLogRequests
        config.policyDir = file.policyDir
        config.mtlsMode = file.mtlsMode
        config.http = file.http

        services.registry.update(config.workloads, from: .config)
        if !services.enforcement.reload(config: config, capture: &capture) {
            // The workloads may have changed even though the policies did not load.
            services.enforcement.recompile(config: config)
        }
        capture.sync()
        if config.accessLogLimit != previousLimit {
            services.accessLog.change(limit: config.accessLogLimit)
            let limit = config.accessLogLimit
            logger.info("access log limit is now \(limit.linesPerSecond == 0 ? "off" : "\(limit.linesPerSecond) lines/s, burst \(limit.burst)")")
        }
        if services.accessLog.requests != config.accessLogRequests {
            services.accessLog.change(requests: config.accessLogRequests)
            logger.info("access log now writes \(config.accessLogRequests == .all ? "every request" : "refused requests only") (accessLog.requests: \(config.accessLogRequests.rawValue))")
        }
        policyFingerprint = currentPolicyFingerprint()
        services.state.publish(capture)
        services.svids.setIdentities(services.registry.presentIdentities.union([services.agentIdentity]))
        reloadAuthority()
        logger.info("reloaded \(services.configPath): \(services.registry.members.count) workload(s)")
        return outcome(config: "applied", errors: services.state.current.policy.lastError ?? [], restartRequired: restartRequired)
    }

    /// Settings a reload cannot apply to a running agent.
    static func restartOnlyChanges(from running: AgentConfig, to file: AgentConfig) -> [String] {
        var changed: [String] = []
        if file.ports != running.ports { changed.append("ports") }
        if file.mark != running.mark || file.markMask != running.markMask { changed.append("mark/markMask") }
        if file.trustDomain != running.trustDomain { changed.append("trustDomain") }
        if file.accessLog != running.accessLog { changed.append("accessLog") }
        if file.limits != running.limits { changed.append("limits") }
        if file.meshNetworks != running.meshNetworks { changed.append("meshNetworks") }
        if file.rootNamespace != running.rootNamespace { changed.append("rootNamespace") }
        if file.graph != running.graph { changed.append("graph") }
        return changed
    }

    /// The node CA is read again too (a new intermediate after a root
    /// rotation); certificates are re-issued only if it changed, and a broken
    /// one is refused.
    private func reloadAuthority() {
        do {
            let authority = try AgentServices.loadAuthority(config)
            if services.svids.issuerCertificateChanged(to: authority) {
                services.svids.renewAll(issuer: authority, because: "the node CA \(config.ca.certificate) changed")
            }
        } catch {
            logger.error("node CA not reloaded, the previous one stays in force: \(error)")
        }
    }

    private func outcome(config result: String, errors: [String], restartRequired: [String]) -> ReloadOutcome {
        let state = services.state.current
        return ReloadOutcome(
            config: result, errors: errors, restartRequired: restartRequired, workloads: services.registry.members.count,
            policyGeneration: state.policy.generation)
    }
}
