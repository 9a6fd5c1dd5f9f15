import Foundation
import Testing
@testable import Kubernetes

@Suite struct EndpointTests {
    @Test(arguments: [
        ("https://10.96.0.1", "https://10.96.0.1:443", "10.96.0.1", 443, ""),
        ("https://10.96.0.1:6443/", "https://10.96.0.1:6443", "10.96.0.1", 6443, ""),
        ("http://127.0.0.1:8001", "http://127.0.0.1:8001", "127.0.0.1", 8001, ""),
        ("HTTPS://API.Cluster.Example:443/k8s/clusters/c-1/", "https://api.cluster.example:443/k8s/clusters/c-1", "api.cluster.example", 443, "/k8s/clusters/c-1"),
        ("https://[fd00:10:96::1]:443", "https://[fd00:10:96::1]:443", "fd00:10:96::1", 443, ""),
        ("https://[fd00:10:96::1]", "https://[fd00:10:96::1]:443", "fd00:10:96::1", 443, ""),
    ])
    func urls(text: String, description: String, host: String, port: Int, basePath: String) throws {
        let endpoint = try APIServerEndpoint(url: text)
        #expect(endpoint.description == description)
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
        #expect(endpoint.basePath == basePath)
    }

    @Test(arguments: [
        ("ftp://10.96.0.1", "must start with https://"),
        ("10.96.0.1:443", "must start with https://"),
        ("https://", "is not a host name"),
        ("https://user:pw@10.96.0.1", "user name or password"),
        ("https://10.96.0.1:0", "is not a port"),
        ("https://10.96.0.1:65536", "is not a port"),
        ("https://10.96.0.1:+44", "is not a port"),
        ("https://10.96.0.1:https", "is not a port"),
        ("https://fd00::1", "is not a host name"),
        ("https://[fd00::1", "closing"),
        ("https://[nothex]:443", "is not an IPv6 address"),
        ("https://[fd00::1]x", "after the IPv6 address"),
        ("https://10.96.0.1/?watch=1", "query"),
        ("https://host name", "is not a host name"),
        ("https://10.96.0.1/a b", "spaces"),
    ])
    func badURLsSayWhy(text: String, reason: String) {
        do {
            _ = try APIServerEndpoint(url: text)
            Issue.record("\(text) was accepted")
        } catch let error as KubernetesSourceError {
            #expect(error.description.contains(reason), "\(error)")
            #expect(error.description.contains("apiServer"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func inClusterFromTheEnvironment() throws {
        let configuration = KubernetesSourceConfiguration(node: "node-a")
        #expect(try configuration.endpoint(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"]).description == "https://10.96.0.1:443")
        #expect(try configuration.endpoint(environment: ["KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "KUBERNETES_SERVICE_PORT": "443"]).authority == "[fd00:10:96::1]:443")
        #expect(throws: KubernetesSourceError.noAPIServer) { try configuration.endpoint(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1"]) }
        #expect(KubernetesSourceError.noAPIServer.description.contains("set workloadSources.kubernetes.apiServer"))
        var configured = configuration
        configured.apiServer = URL(string: "https://api.example:6443")
        #expect(try configured.endpoint(environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"]).host == "api.example")
    }

    @Test func serverNameIsSentForDNSNamesOnly() throws {
        #expect(try APIServerEndpoint(url: "https://api.example").serverName == "api.example")
        #expect(try APIServerEndpoint(url: "https://10.96.0.1").serverName == nil)
        #expect(try APIServerEndpoint(url: "https://[fd00::1]").serverName == nil)
    }

    @Test func nodeNames() throws {
        try KubernetesSourceConfiguration(node: "ip-10-0-1-17.eu-west-1.compute.internal").validate()
        for bad in ["", "Node", "node_a", "-node", "node.", String(repeating: "a", count: 64)] {
            #expect(throws: KubernetesSourceError.invalidNode(bad)) { try KubernetesSourceConfiguration(node: bad).validate() }
        }
    }
}

@Suite struct TokenFileTests {
    static func withFile(_ contents: [UInt8], _ body: (String) throws -> Void) throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("token-\(UUID().uuidString)").path
        #expect(FileManager.default.createFile(atPath: path, contents: Data(contents)))
        defer { try? FileManager.default.removeItem(atPath: path) }
        try body(path)
    }

    @Test func trimmedToken() throws {
        try Self.withFile(Array("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln\n".utf8)) { path in
            let token = try APIServerClient.readToken(path)
            #expect(token == "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
        }
    }

    @Test(arguments: [("", "it is empty"), (" \n", "it is empty"), ("abc\r\nHost: evil", "control characters"), ("tok en", "spaces")])
    func badTokens(contents: String, reason: String) throws {
        try Self.withFile(Array(contents.utf8)) { path in
            #expect(throws: KubernetesSourceError.self) { try APIServerClient.readToken(path) }
            do {
                _ = try APIServerClient.readToken(path)
            } catch {
                #expect("\(error)".contains(reason), "\(error)")
                #expect("\(error)".contains("set tokenFile"))
            }
        }
    }

    @Test func missingFile() {
        do {
            _ = try APIServerClient.readToken("/nonexistent/token")
            Issue.record("read a missing file")
        } catch {
            #expect("\(error)".contains("cannot read the API server token from /nonexistent/token"), "\(error)")
        }
    }
}
