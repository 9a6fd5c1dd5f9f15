/// What the control loop does every tick (one second): follow the policy
/// files, the workloads' cgroups and the node's addresses, keep certificates
/// and the capture table current, and tell systemd the agent is alive.
extension ControlLoop {
    mutating func tick() async {
        ticks += 1
        reloadPoliciesIfTheirFilesChanged()
        services.enforcement.expireGrants(config: config)
        services.registry.rescan()
        await syncWorkloads()
        services.destinations.refreshAddresses()
        if services.trustBundle.poll() != nil {
            services.svids.renewAll(because: "the trust bundle \(services.trustBundle.path) changed")
        }
        services.svids.tick()
        updateMetrics()
        services.accessLog.writeDropSummary()
        if ticks % GraphRecorder.flushInterval == 0 {
            services.graph?.flushSoon()
        }
        if ticks == Self.podSocketsClaimTicks {
            let unclaimed = services.podSockets.closeUnclaimed()
            if !unclaimed.isEmpty {
                logger.info("closed the pod sockets handed over for namespaces no workload was captured in: \(unclaimed.joined(separator: ", "))")
            }
        }
        if ticks % Self.driftCheckEvery == 0 {
            capture.reconcile()
            namespaces.reconcile()
            services.state.publish(capture)
            services.state.publish(namespaces)
        }
        await pingWatchdog()
    }

    /// Brings the captures and certificates to the registry: workloads in
    /// namespaces of their own, the node's table (its sets, and the pod
    /// addresses it source-NATs probes to), one certificate per present identity.
    mutating func syncWorkloads() async {
        await namespaces.sync(services: services, config: config, peerAuthentication: services.state.current.peerAuthentication)
        services.state.publish(namespaces)
        capture.namespaceAddresses = namespaces.addresses
        capture.sync()
        services.state.publish(capture)
        services.svids.setIdentities(services.registry.presentIdentities.union([services.agentIdentity]))
    }

    /// Policy files are watched: an edit applies within a tick, without SIGHUP.
    private mutating func reloadPoliciesIfTheirFilesChanged() {
        guard currentPolicyFingerprint() != policyFingerprint else { return }
        logger.info("policy files in \(config.policyDir) changed: reloading them")
        services.enforcement.reload(config: config, capture: &capture)
        services.state.publish(capture)
        // Taken again: a reload may have changed which JWKS files are named.
        policyFingerprint = currentPolicyFingerprint()
    }

    /// Alive means the control loop runs and every event loop answers; a
    /// wedged loop stops the pings and systemd restarts the agent.
    private func pingWatchdog() async {
        guard services.systemd.watchdogInterval != nil else { return }
        for eventLoop in services.group.makeIterator() {
            try? await eventLoop.submit {}.get()
        }
        services.notify(["WATCHDOG=1"])
    }
}
