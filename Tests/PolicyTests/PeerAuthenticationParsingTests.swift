import Testing

@testable import Policy

@Suite struct PeerAuthenticationParsingTests {
    func parse(_ text: String, file: String = "p.yaml") throws(PolicyLoadError) -> PolicyFile {
        try PolicyFile.parse(text, file: file)
    }

    /// The errors a file gives, as text.
    func errors(_ text: String, file: String = "p.yaml") -> [String] {
        do throws(PolicyLoadError) {
            _ = try parse(text, file: file)
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    @Test func theDocumentedExampleParses() throws {
        let file = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: strict-orders, namespace: shop}
            spec:
              selector: {matchLabels: {app: orders}}
              mtls: {mode: STRICT}
              portLevelMtls:
                8080: {mode: PERMISSIVE}
            """)
        #expect(
            file.peerAuthentications == [
                PeerAuthentication(
                    name: "strict-orders", namespace: "shop", matchLabels: ["app": "orders"], mode: .strict,
                    portLevelModes: [8080: .permissive], file: "p.yaml", line: 1)
            ])
        #expect(file.skippedDocuments.isEmpty)
        #expect(file.peerAuthentications[0].source == "p.yaml:1")
        #expect(file.peerAuthentications[0].reference == "shop/strict-orders")
    }

    @Test func v1beta1EveryModeAndTheShortForms() throws {
        let file = try parse(
            """
            apiVersion: security.istio.io/v1beta1
            kind: PeerAuthentication
            metadata:
              name: no-spec
              namespace: shop
            ---
            apiVersion: security.istio.io/v1beta1
            kind: PeerAuthentication
            metadata: {name: empty-spec, namespace: shop, labels: {team: a}, annotations: {note: "x"}}
            spec: {}
            ---
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: disable, namespace: shop}
            spec:
              selector: {}
              mtls: {mode: DISABLE}
            ---
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: ports, namespace: shop}
            spec:
              selector:
                matchLabels:
                  app.kubernetes.io/name: orders
                  version: "2"
              mtls: {}
              portLevelMtls:
                "1": {mode: UNSET}
                65535:
                  mode: STRICT
                9090: {}
            """)
        let policies = file.peerAuthentications
        #expect(policies.map(\.name) == ["no-spec", "empty-spec", "disable", "ports"])
        #expect(policies.map(\.line) == [1, 7, 12, 19])
        #expect(policies[0].mode == .unset && policies[0].isNamespaceWide)
        #expect(policies[1].mode == .unset && policies[1].isNamespaceWide)
        // An empty selector is no selector, as in Istio.
        #expect(policies[2].mode == .disable && policies[2].matchLabels == nil)
        #expect(policies[3].matchLabels == ["app.kubernetes.io/name": "orders", "version": "2"])
        #expect(policies[3].mode == .unset)
        #expect(policies[3].portLevelModes == [1: .unset, 65535: .strict, 9090: .unset])
    }

    @Test func modesTurnIntoTheInboundMode() {
        #expect(PeerAuthentication.Mode.strict.effective == .STRICT)
        #expect(PeerAuthentication.Mode.permissive.effective == .PERMISSIVE)
        #expect(PeerAuthentication.Mode.disable.effective == .PERMISSIVE)
        #expect(PeerAuthentication.Mode.unset.effective == nil)
    }

    @Test func otherKindsAreCountedNotReadAndEmptyDocumentsIgnored() throws {
        let file = try parse(
            """
            ---
            apiVersion: networking.istio.io/v1
            kind: Sidecar
            metadata: {name: default, namespace: shop}
            spec: {whatever: [1, 2]}
            ---
            ---
            kind: Sidecar
            bogus: true
            ---
            apiVersion: v1
            kind: ConfigMap
            ---
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: mesh, namespace: istio-system}
            spec: {mtls: {mode: STRICT}}
            ...
            """)
        #expect(file.skippedDocuments == ["Sidecar": 2, "ConfigMap": 1])
        #expect(file.peerAuthentications.map(\.reference) == ["istio-system/mesh"])
        #expect(try parse("").peerAuthentications.isEmpty)
        #expect(try parse("# only a comment\n").skippedDocuments.isEmpty)
    }

    static let header = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: shop}\n"

    /// Every bad document fails with its file, line and key path.
    static let badDocuments: [(String, String)] = [
        ("kind: [PeerAuthentication]\n", "p.yaml:1: kind: expected a single value, not a list or mapping"),
        ("apiVersion: v1\n", "p.yaml:1: kind: is required"),
        ("- a\n- b\n", "p.yaml:1: expected a mapping of keys to values"),
        (
            "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: shop}\n",
            "p.yaml:1: apiVersion: PeerAuthentication is security.istio.io/v1 or security.istio.io/v1beta1, got \"security.istio.io/v1alpha1\""
        ),
        ("kind: PeerAuthentication\nmetadata: {name: a, namespace: shop}\n", "p.yaml:1: apiVersion: is required"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n", "p.yaml:1: metadata: is required"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {namespace: shop}\n", "p.yaml:3: metadata.name: is required"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a}\n", "p.yaml:3: metadata.namespace: is required"),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: A_b, namespace: shop}\n",
            "p.yaml:3: metadata.name: \"A_b\" is not a valid name: use at most 253 lowercase letters, digits, '-' and '.'"
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: shop.x}\n",
            "p.yaml:3: metadata.namespace: \"shop.x\" is not a valid namespace"
        ),
        (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: shop, uid: x}\n",
            "p.yaml:3: metadata.uid: unknown key; expected one of: annotations, labels, name, namespace"
        ),
        (header + "status: {}\n", "p.yaml:4: status: unknown key; expected one of: apiVersion, kind, metadata, spec"),
        (header + "spec: [STRICT]\n", "p.yaml:4: spec: expected a mapping of keys to values"),
        (header + "spec: {mtls: {mode: strict}}\n", "p.yaml:4: spec.mtls.mode: must be one of UNSET, PERMISSIVE, STRICT, DISABLE, got \"strict\""),
        (header + "spec:\n  mtls:\n    mode: ON\n", "p.yaml:6: spec.mtls.mode: must be one of UNSET, PERMISSIVE, STRICT, DISABLE, got \"ON\""),
        (header + "spec:\n  mtls:\n    mode: STRICT\n    extra: 1\n", "p.yaml:7: spec.mtls.extra: unknown key; expected one of: mode"),
        (header + "spec:\n  mtls: STRICT\n", "p.yaml:5: spec.mtls: expected a mapping of keys to values"),
        (header + "spec:\n  mTLS: {mode: STRICT}\n", "p.yaml:5: spec.mTLS: unknown key; expected one of: mtls, portLevelMtls, selector"),
        (header + "spec:\n  selector: {app: orders}\n", "p.yaml:5: spec.selector.app: unknown key; expected one of: matchLabels"),
        (header + "spec:\n  selector: {matchLabels: [app]}\n", "p.yaml:5: spec.selector.matchLabels: expected a mapping of keys to values"),
        (header + "spec:\n  selector: {matchLabels: {app: [a]}}\n", "p.yaml:5: spec.selector.matchLabels.app: expected a single value, not a list or mapping"),
        (
            header + "spec:\n  selector:\n    matchLabels:\n      -app: x\n",
            "p.yaml:7: spec.selector.matchLabels.-app: \"-app\" is not a label key"
        ),
        (
            header + "spec:\n  selector:\n    matchLabels:\n      app: \"a b\"\n",
            "p.yaml:7: spec.selector.matchLabels.app: \"a b\" is not a label value"
        ),
        (
            header + "spec:\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n",
            "p.yaml:6: spec.portLevelMtls: needs spec.selector.matchLabels; a namespace-wide or mesh-wide PeerAuthentication cannot set port-level mTLS"
        ),
        (
            header + "spec:\n  selector: {matchLabels: {}}\n  portLevelMtls: {8080: {mode: STRICT}}\n",
            "p.yaml:6: spec.portLevelMtls: needs spec.selector.matchLabels"
        ),
        (
            header + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    0: {mode: STRICT}\n",
            "p.yaml:7: spec.portLevelMtls.0: a port must be a whole number from 1 to 65535, got \"0\""
        ),
        (
            header + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    65536:\n      mode: STRICT\n",
            "p.yaml:7: spec.portLevelMtls.65536: a port must be a whole number from 1 to 65535, got \"65536\""
        ),
        (
            header + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    http: {mode: STRICT}\n",
            "p.yaml:7: spec.portLevelMtls.http: a port must be a whole number from 1 to 65535, got \"http\""
        ),
        (
            header + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    8080: {mode: STRICT}\n    \"08080\": {mode: PERMISSIVE}\n",
            "p.yaml:8: spec.portLevelMtls.08080: port 8080 appears twice"
        ),
        (
            header + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    8080:\n",
            "p.yaml:7: spec.portLevelMtls.8080: must not be empty; write the port's mode, e.g. {mode: STRICT}"
        ),
        (
            header + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls: {}\n",
            "p.yaml:6: spec.portLevelMtls: must name at least one port when present"
        ),
        (
            header + "spec:\n  selector: {matchLabels: {app: a}}\n  portLevelMtls:\n    8080: {mode: STRICT, port: 1}\n",
            "p.yaml:7: spec.portLevelMtls.8080.port: unknown key; expected one of: mode"
        ),
        (header + "spec: {mtls: {mode: STRICT}, mtls: {mode: STRICT}}\n", "p.yaml:4: not valid YAML: a mapping has the key \"mtls\" twice"),
        ("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: shop\n", "p.yaml:4: not valid YAML"),
    ]

    @Test(arguments: 0..<badDocuments.count)
    func badDocumentsAreRefusedWithFileLineAndKeyPath(index: Int) {
        let (text, expected) = Self.badDocuments[index]
        let found = errors(text)
        #expect(found.count == 1)
        #expect(found.first?.hasPrefix(expected) == true, "\(found) should start with \(expected)")
    }

    @Test func everyBadDocumentOfAFileIsReportedAndTheGoodOnesDoNotCount() {
        let found = errors(
            Self.header + "spec: {mtls: {mode: STRICT}}\n---\n" + Self.header + "spec: {mtls: {mode: NOPE}}\n---\n"
                + "kind: Sidecar\n---\n" + Self.header + "spec: {extra: 1}\n",
            file: "/etc/mesh-agent/policies/shop.yaml")
        #expect(
            found == [
                "/etc/mesh-agent/policies/shop.yaml:9: spec.mtls.mode: must be one of UNSET, PERMISSIVE, STRICT, DISABLE, got \"NOPE\"",
                "/etc/mesh-agent/policies/shop.yaml:16: spec.extra: unknown key; expected one of: mtls, portLevelMtls, selector",
            ])
    }
}
