// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "mesh-agent",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "mesh-agent", targets: ["mesh-agent"]),
        .executable(name: "agentctl", targets: ["agentctl"]),
        .executable(name: "mesh-agent-cni", targets: ["mesh-agent-cni"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CNetlink", pkgConfig: "libnftnl", providers: [.apt(["libnftnl-dev", "libmnl-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        // The system SQLite behind a small safe type: the only module that
        // touches its C API.
        .target(name: "SQLite", dependencies: ["CSQLite"]),
        // The observed service graph as values: edges, aggregation, path
        // templates, JSON and pictures, suggested policies and the report. No
        // I/O, so agentctl and tests use it as is.
        .target(name: "Graph", dependencies: ["Policy"]),
        // The graph's SQLite database, for the agent.
        .target(name: "GraphStore", dependencies: ["Graph", "SQLite"]),
        .target(
            name: "LinuxNet",
            dependencies: [
                "CNetlink",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        .target(
            name: "Workloads",
            dependencies: [
                "LinuxNet", "TLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Pods on this node from the Kubernetes API (list and watch), as
        // DiscoveredPods for the registry.
        .target(
            name: "Kubernetes",
            dependencies: [
                "Workloads", "LinuxNet", "TLS", "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The container engines' REST API (Podman's libpod and the Docker
        // Engine API) as a workload source: decoders that need no socket, and
        // the client that lists and follows events over the engine's socket.
        .target(
            name: "EngineAPI",
            dependencies: [
                "Workloads", "LinuxNet",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .target(
            name: "Netfilter",
            dependencies: ["CNetlink", "LinuxNet"]
        ),
        .target(
            name: "TLS",
            dependencies: [
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ]
        ),
        .target(
            name: "Identity",
            dependencies: [
                "TLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "Proxy",
            dependencies: [
                "LinuxNet", "TLS", "Policy", "Workloads",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
                .product(name: "NIOHPACK", package: "swift-nio-http2"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "Policy",
            dependencies: [
                "TLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The CNI protocol (environment, network config, results) and the
        // enrollment protocol between mesh-agent-cni and the agent. Standard
        // library only: the plugin is a small binary a runtime runs per pod.
        .target(name: "CNI"),
        // The agent's end of the enrollment protocol: a Unix-socket server.
        .target(
            name: "CNIServer",
            dependencies: [
                "CNI", "LinuxNet",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        // The admin API's JSON as both ends see it: the agent encodes these
        // views and agentctl decodes them, so agentctl needs no daemon code.
        .target(name: "AdminAPI"),
        // The config file as agentctl checks it and the agent runs it: no
        // proxy, no sockets, so `agentctl config check` needs no daemon code.
        .target(
            name: "Config",
            dependencies: ["Policy", "LinuxNet", "Workloads", "TLS"]
        ),
        .target(
            name: "Agent",
            dependencies: [
                "AdminAPI", "Config", "Proxy", "Workloads", "Netfilter", "LinuxNet", "TLS", "Identity", "Policy", "Kubernetes", "EngineAPI", "CNI", "CNIServer",
                "Graph", "GraphStore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "mesh-agent",
            dependencies: [
                "Agent",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The chained CNI plugin: no NIO, no agent code, only the protocol.
        // The runtime runs it from the node's /opt/cni/bin, where no Swift
        // runtime is installed (mesh-agent-cni install copies it there from
        // the image), so it is one static executable; lld, because GNU ld
        // warns about the Swift runtime's optional dlopen in a static binary.
        // Sanitizer runtimes cannot be linked statically: their builds
        // (Tests/Sanitizers/run.sh) set MESH_AGENT_SANITIZE.
        .executableTarget(
            name: "mesh-agent-cni", dependencies: ["CNI"],
            linkerSettings: Context.environment["MESH_AGENT_SANITIZE"] == nil ? [.unsafeFlags(["-static-executable", "-use-ld=lld"])] : []),
        .executableTarget(
            name: "micro-bench",
            dependencies: [
                "Policy", "Config", "Proxy", "Workloads", "LinuxNet", "EmbeddedLinks", "Agent", "Graph", "TLS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            ]
        ),
        .executableTarget(
            name: "agentctl",
            // Never Agent or Proxy: the client reads the admin API's views and
            // checks files, it does not carry the daemon.
            dependencies: [
                "AdminAPI", "Config", "Policy", "Identity", "TLS", "Graph",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Keys and tokens shared by the test targets (not part of any product).
        .target(name: "TestFixtures", path: "Tests/Fixtures"),
        // Both ends of a connection joined in memory, for the tunnel's tests and micro-benchmarks.
        .target(name: "EmbeddedLinks", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
        ], path: "Tests/EmbeddedLinks"),
        .testTarget(name: "NetfilterTests", dependencies: ["Netfilter", "TestFixtures"]),
        .testTarget(name: "LinuxNetTests", dependencies: ["LinuxNet", "TestFixtures", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "WorkloadsTests", dependencies: [
            "Workloads", "LinuxNet", "TLS", "TestFixtures",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        .testTarget(name: "KubernetesTests", dependencies: [
            "Kubernetes", "Workloads", "LinuxNet", "TLS", "COpenSSL", "TestFixtures",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        .testTarget(
            name: "EngineAPITests",
            dependencies: [
                "EngineAPI", "Workloads", "LinuxNet", "TestFixtures",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            // Bytes recorded from a real Podman, read by path (not bundled).
            exclude: ["Recorded"]
        ),
        .testTarget(name: "ProxyTests", dependencies: [
            "Proxy", "TLS", "Policy", "Workloads", "LinuxNet", "EmbeddedLinks",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
        ]),
        .testTarget(name: "AdminAPITests", dependencies: ["AdminAPI"]),
        .testTarget(name: "GraphTests", dependencies: ["Graph", "GraphStore", "SQLite", "Policy", "TestFixtures", .product(name: "NIOCore", package: "swift-nio")]),
        .testTarget(name: "CNITests", dependencies: [
            "CNI", "CNIServer", "LinuxNet", "TestFixtures",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "MetricsTestKit", package: "swift-metrics"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
        ]),
        .testTarget(name: "ConfigTests", dependencies: ["Config", "Policy", "LinuxNet", "Workloads"]),
        .testTarget(name: "AgentTests", dependencies: [
            "Agent", "AdminAPI", "Config", "Workloads", "Proxy", "Policy", "Graph", "TestFixtures",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        .testTarget(name: "PolicyTests", dependencies: [
            "Policy", "TLS", "TestFixtures",
            .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "TLSTests", dependencies: [
            "TLS", "COpenSSL", "TestFixtures",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
        ]),
        .testTarget(name: "IdentityTests", dependencies: [
            "Identity", "TLS", "TestFixtures",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
        ]),
    ],
    swiftLanguageModes: [.v6]
)

// libFuzzer targets (Fuzz/), one executable each over a parser that takes bytes
// from outside. They need libFuzzer and ASan linked in, which only the fuzz
// build does (Fuzz/fuzz.sh, `make fuzz`): they exist only when MESH_AGENT_FUZZ
// is set, and then the other executables and the tests are left out of it.
if Context.environment["MESH_AGENT_FUZZ"] != nil {
    let nio: (String) -> Target.Dependency = { .product(name: $0, package: "swift-nio") }
    let http2: (String) -> Target.Dependency = { .product(name: $0, package: "swift-nio-http2") }
    package.products.removeAll()
    package.targets += [
        .systemLibrary(name: "CLibFuzzer", path: "Fuzz/Support/CLibFuzzer"),
        .target(
            name: "FuzzSupport",
            dependencies: [
                "CLibFuzzer", "Policy", "Proxy", "TLS", "Workloads", "TestFixtures",
                nio("NIOCore"), nio("NIOEmbedded"), nio("NIOHTTP1"), http2("NIOHTTP2"), http2("NIOHPACK"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            path: "Fuzz/Support/FuzzSupport"),
    ]
    let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
        ("HTTP1Request", ["Policy", "Proxy", "TestFixtures", nio("NIOCore"), nio("NIOEmbedded"), nio("NIOHTTP1")]),
        ("HTTP1Connection", []),
        ("HTTP2Inspection", []),
        ("HBONE", ["Proxy", nio("NIOCore"), nio("NIOEmbedded"), http2("NIOHTTP2"), http2("NIOHPACK")]),
        ("HTTPPath", ["Policy"]),
        ("HTTPRequestTap", ["Proxy"]),
        ("PathTemplate", ["Graph"]),
        ("JWT", ["Policy", "TestFixtures"]),
        ("JWKS", ["Policy", "TestFixtures"]),
        ("PolicyYAML", ["Policy", "TestFixtures"]),
        ("AgentConfig", ["Config"]),
        ("SockDiag", ["LinuxNet"]),
        ("Conntrack", ["LinuxNet"]),
        ("Netfilter", ["Netfilter", "LinuxNet"]),
        ("Cgroup", ["LinuxNet"]),
        ("PodCgroup", ["Workloads", "LinuxNet"]),
        ("KubernetesWatch", ["Kubernetes", "Workloads", "LinuxNet", nio("NIOCore")]),
        ("EngineAPI", ["EngineAPI", "Workloads", "LinuxNet", nio("NIOCore")]),
        ("CNI", ["CNI"]),
        ("CertificateDER", ["TLS"]),
        ("CertificatePEM", ["TLS"]),
        ("SpiffeID", ["TLS"]),
    ]
    for (name, dependencies) in fuzzTargets {
        package.targets.append(.executableTarget(
            name: "Fuzz\(name)",
            dependencies: ["FuzzSupport"] + dependencies,
            path: "Fuzz/Targets/\(name)"))
    }
    // Only the modules the fuzz targets use are built (not the agent's own
    // services): the fuzz build runs in every make test.
    var used = Set<String>()
    var usedPackages = Set<String>()
    var pending = fuzzTargets.map { "Fuzz\($0.name)" }
    while let name = pending.popLast() {
        guard used.insert(name).inserted, let target = package.targets.first(where: { $0.name == name }) else { continue }
        for dependency in target.dependencies {
            switch dependency {
            case .targetItem(let name, _), .byNameItem(let name, _): pending.append(name)
            case .productItem(_, let package?, _, _): usedPackages.insert(package)
            default: break
            }
        }
    }
    package.targets.removeAll { !used.contains($0.name) }
    package.dependencies.removeAll { dependency in
        guard case .sourceControl(_, let location, _) = dependency.kind, let last = location.split(separator: "/").last else { return false }
        return !usedPackages.contains(last.hasSuffix(".git") ? String(last.dropLast(4)) : String(last))
    }
}
