import CNI
import Workloads

/// The CNI plugin's requests, answered by the control loop: an ADD returns
/// only once the pod is captured (its table and listeners are in its
/// namespace), so the pod's first packet is already captured.
extension ControlLoop {
    mutating func enroll(_ request: EnrollmentRequest) async -> Result<EnrollmentOutcome, Error> {
        let pod = request.podDescription
        do {
            let outcome = try await answer(request)
            logger.info("CNI \(request.command.rawValue) for \(pod): \(outcome)")
            return .success(outcome)
        } catch {
            logger.warning("CNI \(request.command.rawValue) for \(pod) failed: \(error)")
            return .failure(error)
        }
    }

    private mutating func answer(_ request: EnrollmentRequest) async throws -> EnrollmentOutcome {
        if config.workloadSources.kubernetes != nil {
            return try await answerFromTheAPI(request)
        }
        switch request.command {
        case .add:
            let entry = try CNIEnrollments.entry(for: request, mount: services.mount)
            cni.add(entry)
            let rejections = services.registry.update(cni.specs(trustDomain: config.trustDomain), from: CNIEnrollments.source)
            await syncWorkloads()
            let key = "\(entry.namespace)/\(entry.name)"
            if let rejection = rejections.first(where: { $0.spec.workload.qualifiedName == key }) {
                forget(request.containerID)
                throw CNIEnrollmentError.notCaptured(rejection.reason)
            }
            guard namespaces.scopes[key] != nil else {
                let reason = namespaces.waiting[key] ?? "its capture could not be made"
                forget(request.containerID)
                await syncWorkloads()
                throw CNIEnrollmentError.notCaptured(reason)
            }
            return .captured
        case .del:
            if forget(request.containerID) { await syncWorkloads() }
            return .removed
        case .check:
            guard let entry = cni.entries[request.containerID], namespaces.scopes["\(entry.namespace)/\(entry.name)"] != nil else {
                throw CNIEnrollmentError.notCaptured("the agent holds no capture for container \(request.containerID)")
            }
            return .captured
        }
    }

    /// With the Kubernetes source the API decides who the pod is; the plugin
    /// only waits for the capture.
    private mutating func answerFromTheAPI(_ request: EnrollmentRequest) async throws -> EnrollmentOutcome {
        guard request.command != .del else { return .removed }
        let namespace = request.podNamespace ?? "default"
        let name = request.podName ?? request.containerID
        let key = "\(namespace)/\(name)"
        let member = services.registry.members.first { $0.source.name == "kubernetes" && $0.workload.qualifiedName == key }
        guard member != nil else {
            guard let pod = services.podSources.kubernetesPod(namespace: namespace, name: name) else {
                throw CNIEnrollmentError.unknownPod(key)
            }
            if case .notEnrolled(let reason) = pod.enrollment { return .notCaptured(reason: reason) }
            throw CNIEnrollmentError.notCaptured(services.podSources.unusableReason(namespace: namespace, name: name) ?? "not a workload yet")
        }
        await syncWorkloads()
        guard namespaces.scopes[key] != nil else {
            throw CNIEnrollmentError.notCaptured(namespaces.waiting[key] ?? "its capture is not made yet")
        }
        return .captured
    }

    @discardableResult
    private mutating func forget(_ containerID: String) -> Bool {
        guard cni.remove(containerID: containerID) != nil else { return false }
        services.registry.update(cni.specs(trustDomain: config.trustDomain), from: CNIEnrollments.source)
        return true
    }
}
