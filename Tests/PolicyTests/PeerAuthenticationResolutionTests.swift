import Testing

@testable import Policy

@Suite struct PeerAuthenticationResolutionTests {
    let orders = ["app": "orders", "version": "v2"]

    func set(_ policies: [PeerAuthentication], default mode: MTLSMode = .PERMISSIVE) -> PeerAuthenticationSet {
        PeerAuthenticationSet(policies, rootNamespace: "istio-system", defaultMode: mode)
    }

    func mesh(_ mode: PeerAuthentication.Mode, name: String = "default") -> PeerAuthentication {
        PeerAuthentication(name: name, namespace: "istio-system", mode: mode)
    }

    func namespaceWide(_ mode: PeerAuthentication.Mode, name: String = "default", namespace: String = "shop") -> PeerAuthentication {
        PeerAuthentication(name: name, namespace: namespace, mode: mode)
    }

    func workload(
        _ mode: PeerAuthentication.Mode, name: String = "orders", labels: [String: String] = ["app": "orders"], ports: [UInt16: PeerAuthentication.Mode] = [:]
    ) -> PeerAuthentication {
        PeerAuthentication(name: name, namespace: "shop", matchLabels: labels, mode: mode, portLevelModes: ports)
    }

    @Test func withoutPoliciesTheConfiguredDefaultApplies() {
        #expect(set([]).mode(namespace: "shop", labels: orders, port: 8080) == .PERMISSIVE)
        #expect(set([], default: .STRICT).mode(namespace: "shop", labels: orders, port: 8080) == .STRICT)
        #expect(set([]).decision(namespace: "shop", labels: [:], port: 1) == .init(mode: .PERMISSIVE, level: .default, policy: nil))
        #expect(set([]).decision(namespace: "shop", labels: [:], port: 1).description == "PERMISSIVE (the configured default)")
    }

    @Test func narrowerLevelsWin() {
        let policies = set([
            mesh(.strict), namespaceWide(.permissive),
            workload(.strict, ports: [8080: .permissive]),
        ])
        // Port level, then workload, then namespace, then mesh.
        #expect(policies.decision(namespace: "shop", labels: orders, port: 8080) == .init(mode: .PERMISSIVE, level: .port, policy: "shop/orders"))
        #expect(policies.decision(namespace: "shop", labels: orders, port: 9090) == .init(mode: .STRICT, level: .workload, policy: "shop/orders"))
        #expect(policies.decision(namespace: "shop", labels: ["app": "cart"], port: 8080) == .init(mode: .PERMISSIVE, level: .namespace, policy: "shop/default"))
        #expect(policies.decision(namespace: "blog", labels: orders, port: 8080) == .init(mode: .STRICT, level: .mesh, policy: "istio-system/default"))
        #expect(policies.decision(namespace: "blog", labels: orders, port: 8080).description == "STRICT (mesh-level, PeerAuthentication istio-system/default)")
        // The mesh-wide policy covers workloads in the root namespace too.
        #expect(policies.mode(namespace: "istio-system", labels: [:], port: 1) == .STRICT)
    }

    @Test func aSelectorMatchesWhenAllItsLabelsAreTheWorkloads() {
        let policies = set([workload(.strict, labels: ["app": "orders", "version": "v2"])])
        #expect(policies.mode(namespace: "shop", labels: ["app": "orders", "version": "v2", "extra": "x"], port: 1) == .STRICT)
        #expect(policies.mode(namespace: "shop", labels: ["app": "orders"], port: 1) == .PERMISSIVE)
        #expect(policies.mode(namespace: "shop", labels: ["app": "orders", "version": "v1"], port: 1) == .PERMISSIVE)
        // Only in its own namespace.
        #expect(policies.mode(namespace: "blog", labels: ["app": "orders", "version": "v2"], port: 1) == .PERMISSIVE)
    }

    @Test func unsetInheritsFromTheNextLevel() {
        // Port UNSET → the workload's mode; workload UNSET → the namespace's; namespace UNSET → the mesh's.
        let policies = set([
            mesh(.strict), namespaceWide(.unset),
            workload(.unset, ports: [8080: .unset, 9090: .permissive]),
        ])
        #expect(policies.decision(namespace: "shop", labels: orders, port: 8080) == .init(mode: .STRICT, level: .mesh, policy: "istio-system/default"))
        #expect(policies.mode(namespace: "shop", labels: orders, port: 9090) == .PERMISSIVE)
        #expect(policies.mode(namespace: "shop", labels: ["app": "cart"], port: 9090) == .STRICT)
        // All UNSET: the configured default.
        let unset = set([mesh(.unset), namespaceWide(.unset), workload(.unset, ports: [8080: .unset])], default: .STRICT)
        #expect(unset.decision(namespace: "shop", labels: orders, port: 8080) == .init(mode: .STRICT, level: .default, policy: nil))
        // A port UNSET under a STRICT workload is STRICT although the namespace is PERMISSIVE.
        let workloadStrict = set([namespaceWide(.permissive), workload(.strict, ports: [8080: .unset])])
        #expect(workloadStrict.decision(namespace: "shop", labels: orders, port: 8080) == .init(mode: .STRICT, level: .workload, policy: "shop/orders"))
    }

    @Test func disableIsPermissiveForInboundPlaintext() {
        let policies = set([mesh(.strict), namespaceWide(.disable), workload(.strict, ports: [8080: .disable])], default: .STRICT)
        #expect(policies.mode(namespace: "shop", labels: orders, port: 8080) == .PERMISSIVE)
        #expect(policies.mode(namespace: "shop", labels: ["app": "cart"], port: 8080) == .PERMISSIVE)
        #expect(policies.mode(namespace: "shop", labels: orders, port: 9090) == .STRICT)
    }

    @Test func tiesGoToTheFirstNameAndAreWarnedAbout() {
        let policies = set([
            mesh(.permissive, name: "z-mesh"), mesh(.strict, name: "a-mesh"),
            namespaceWide(.strict, name: "b-shop"), namespaceWide(.permissive, name: "a-shop"),
            workload(.permissive, name: "orders-b", labels: ["app": "orders"]),
            workload(.strict, name: "orders-a", labels: ["version": "v2"]),
            workload(.strict, name: "cart", labels: ["app": "cart"]),
        ])
        #expect(policies.decision(namespace: "blog", labels: [:], port: 1) == .init(mode: .STRICT, level: .mesh, policy: "istio-system/a-mesh"))
        #expect(policies.decision(namespace: "shop", labels: [:], port: 1) == .init(mode: .PERMISSIVE, level: .namespace, policy: "shop/a-shop"))
        // Both orders policies select this workload: orders-a decides, by name.
        #expect(policies.decision(namespace: "shop", labels: orders, port: 1) == .init(mode: .STRICT, level: .workload, policy: "shop/orders-a"))
        #expect(policies.mode(namespace: "shop", labels: ["app": "orders"], port: 1) == .PERMISSIVE)
        #expect(
            policies.warnings == [
                "PeerAuthentication istio-system/z-mesh ignored: istio-system/a-mesh is also mesh-wide and applies (first by name; Istio would take the oldest)",
                "PeerAuthentication shop/b-shop ignored: shop/a-shop is also namespace-wide and applies (first by name; Istio would take the oldest)",
                // A workload labelled app=cart, version=v2 would have both.
                "PeerAuthentication shop/cart and shop/orders-a can select the same workload; where both do, shop/cart applies (first by name; Istio would take the oldest)",
                "PeerAuthentication shop/orders-a and shop/orders-b can select the same workload; where both do, shop/orders-a applies (first by name; Istio would take the oldest)",
            ])
    }

    @Test func theFirstMatchingWorkloadPolicyDecidesAloneEvenWithoutThePort() {
        // As in Istio, one workload policy applies; the other's port levels are not consulted.
        let policies = set([
            workload(.unset, name: "a", labels: ["app": "orders"]),
            workload(.strict, name: "b", labels: ["app": "orders"], ports: [8080: .strict]),
            namespaceWide(.permissive),
        ])
        #expect(policies.decision(namespace: "shop", labels: orders, port: 8080) == .init(mode: .PERMISSIVE, level: .namespace, policy: "shop/default"))
    }

    @Test func selectorsInTheRootNamespaceApplyToNothing() {
        let root = PeerAuthentication(name: "sel", namespace: "istio-system", matchLabels: ["app": "orders"], mode: .strict, file: "mesh.yaml", line: 3)
        let policies = set([root])
        #expect(policies.mode(namespace: "istio-system", labels: orders, port: 1) == .PERMISSIVE)
        #expect(policies.mode(namespace: "shop", labels: orders, port: 1) == .PERMISSIVE)
        #expect(
            policies.warnings == [
                "PeerAuthentication istio-system/sel (mesh.yaml:3) ignored: a policy with a selector in the root namespace applies to no workload, as in Istio"
            ])
    }

    @Test func selectorsThatCannotMeetAreNoConflict() {
        let policies = set([
            workload(.strict, name: "v1", labels: ["app": "orders", "version": "v1"]),
            workload(.permissive, name: "v2", labels: ["app": "orders", "version": "v2"]),
        ])
        #expect(policies.warnings.isEmpty)
        #expect(policies.mode(namespace: "shop", labels: ["app": "orders", "version": "v1"], port: 1) == .STRICT)
        #expect(policies.policies.map(\.name) == ["v1", "v2"])
    }
}
