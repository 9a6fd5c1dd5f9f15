import Foundation
import Testing

@testable import Policy

@Suite struct PolicyLoaderTests {
    /// A fresh directory for one test, removed afterwards.
    func withDirectory(_ files: [String: String], _ body: (String) throws -> Void) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ma-policy-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for (name, text) in files {
            try text.write(toFile: "\(directory)/\(name)", atomically: true, encoding: .utf8)
        }
        try body(directory)
    }

    func load(_ directory: String, default mode: MTLSMode = .PERMISSIVE) throws(PolicyLoadError) -> PolicySet {
        try PolicyLoader.load(directory: directory, rootNamespace: "istio-system", defaultMode: mode)
    }

    func policy(_ name: String, _ namespace: String, _ spec: String) -> String {
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: \(name), namespace: \(namespace)}\nspec: \(spec)\n"
    }

    @Test func readsEveryYamlFileInNameOrder() throws {
        try withDirectory([
            "10-mesh.yaml": policy("default", "istio-system", "{mtls: {mode: STRICT}}"),
            "20-shop.yml": policy("default", "shop", "{mtls: {mode: PERMISSIVE}}") + "---\n"
                + policy("orders", "shop", "{selector: {matchLabels: {app: orders}}, portLevelMtls: {8443: {mode: STRICT}}}"),
            "30-authz.yaml": "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\n",
            "README.md": "not: [policy",
            ".hidden.yaml": "not: [policy",
            "notes.yaml.bak": "not: [policy",
        ]) { directory in
            let loaded = try load(directory)
            #expect(loaded.files.map { ($0 as NSString).lastPathComponent } == ["10-mesh.yaml", "20-shop.yml", "30-authz.yaml"])
            #expect(loaded.peerAuthentication.policies.map(\.reference) == ["istio-system/default", "shop/default", "shop/orders"])
            #expect(loaded.authorization.policies.map(\.reference) == ["shop/x"])
            #expect(loaded.skippedDocuments.isEmpty)
            #expect(loaded.warnings.isEmpty)
            #expect(loaded.mode(namespace: "shop", labels: ["app": "orders"], port: 8443) == .STRICT)
            #expect(loaded.mode(namespace: "shop", labels: ["app": "orders"], port: 8080) == .PERMISSIVE)
            #expect(loaded.mode(namespace: "blog", labels: [:], port: 8080) == .STRICT)
            #expect(loaded.peerAuthentication.policies[2].source == "\(directory)/20-shop.yml:6")
        }
    }

    @Test func oneBadFileLoadsNothingAndEveryFailureIsListed() throws {
        try withDirectory([
            "a.yaml": policy("good", "shop", "{mtls: {mode: STRICT}}"),
            "b.yaml": policy("bad", "shop", "{mtls: {mode: strict}}"),
            "c.yaml": "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: shop",
        ]) { directory in
            #expect {
                try load(directory)
            } throws: { error in
                guard let error = error as? PolicyLoadError else { return false }
                return error.errors.count == 2
                    && error.errors[0].description == "\(directory)/b.yaml:4: spec.mtls.mode: must be one of UNSET, PERMISSIVE, STRICT, DISABLE, got \"strict\""
                    && error.errors[1].description.hasPrefix("\(directory)/c.yaml:")
                    && error.errors[1].reason.hasPrefix("not valid YAML")
                    && error.description.hasPrefix("policies not loaded (2 errors; the previous policies stay in force):\n  \(directory)/b.yaml:4: ")
            }
        }
    }

    @Test func theSamePolicyTwiceIsAnError() throws {
        try withDirectory([
            "a.yaml": policy("orders", "shop", "{mtls: {mode: STRICT}}"),
            "b.yaml": "# the same name again\n" + policy("orders", "shop", "{mtls: {mode: PERMISSIVE}}") + "---\n" + policy("orders", "blog", "{}"),
        ]) { directory in
            do throws(PolicyLoadError) {
                _ = try load(directory)
                Issue.record("a duplicate must not load")
            } catch {
                #expect(error.errors.map(\.description) == ["\(directory)/b.yaml:2: PeerAuthentication shop/orders is already defined at \(directory)/a.yaml:1"])
            }
        }
    }

    @Test func aMissingDirectoryHoldsNoPolicies() throws {
        let loaded = try load("/nonexistent/ma-policy-\(UUID().uuidString)", default: .STRICT)
        #expect(loaded.files.isEmpty)
        #expect(loaded.peerAuthentication.policies.isEmpty)
        #expect(loaded.mode(namespace: "shop", labels: [:], port: 80) == .STRICT)
        try withDirectory([:]) { directory throws in
            #expect(try load(directory).peerAuthentication.policies.isEmpty)
        }
    }

    @Test func somethingThatIsNotADirectoryOrCannotBeReadIsAnError() throws {
        try withDirectory(["file.yaml": "kind: Other\n"]) { directory in
            do throws(PolicyLoadError) {
                _ = try load("\(directory)/file.yaml")
                Issue.record("a file is not a policy directory")
            } catch {
                #expect(error.errors.map(\.description) == ["\(directory)/file.yaml: the policy directory is not a directory"])
            }
            // A path through a file cannot be looked at: not the same as missing.
            do throws(PolicyLoadError) {
                _ = try load("\(directory)/file.yaml/policies")
                Issue.record("a path through a file is not a missing directory")
            } catch {
                #expect(error.errors.first?.reason.hasPrefix("cannot read the policy directory: ") == true)
            }
            // An entry named like a policy file that cannot be read as one.
            try FileManager.default.createDirectory(atPath: "\(directory)/sub.yaml", withIntermediateDirectories: false)
            do throws(PolicyLoadError) {
                _ = try load(directory)
                Issue.record("an unreadable policy file must fail the load")
            } catch {
                #expect(error.errors.count == 1)
                #expect(error.errors.first?.file == "\(directory)/sub.yaml")
                #expect(error.errors.first?.reason.hasPrefix("cannot read the policy file: ") == true)
            }
        }
    }

    @Test func warningsComeBackWithTheLoad() throws {
        try withDirectory([
            "mesh.yaml": policy("a", "istio-system", "{mtls: {mode: STRICT}}") + "---\n" + policy("b", "istio-system", "{mtls: {mode: PERMISSIVE}}"),
        ]) { directory in
            let loaded = try load(directory)
            #expect(loaded.warnings.count == 1)
            #expect(loaded.warnings.first?.hasPrefix("PeerAuthentication istio-system/b ignored: istio-system/a is also mesh-wide") == true)
            #expect(loaded.mode(namespace: "shop", labels: [:], port: 1) == .STRICT)
        }
    }
}
