import CNI

/// Request configurations from the CNI 1.0 specification's appendix
/// (SPEC.md, "Appendix: Examples"), as a runtime passes them on stdin, and
/// what this plugin's conflist entry adds to them.
enum SpecExamples {
    /// ADD, step 3: `portmap`, a chained plugin that changes nothing in the
    /// result, gets the result of `bridge` and `tuning` as `prevResult`.
    static let addPortmap = """
        {
          "cniVersion": "1.0.0",
          "name": "dbnet",
          "type": "portmap",
          "runtimeConfig": {
            "portMappings" : [
              { "hostPort": 8080, "containerPort": 80, "protocol": "tcp" }
            ]
          },
          "prevResult": {
            "ips": [
                {
                  "address": "10.1.0.5/16",
                  "gateway": "10.1.0.1",
                  "interface": 2
                }
            ],
            "routes": [
              {
                "dst": "0.0.0.0/0"
              }
            ],
            "interfaces": [
                {
                    "name": "cni0",
                    "mac": "00:11:22:33:44:55"
                },
                {
                    "name": "veth3243",
                    "mac": "55:44:33:22:11:11"
                },
                {
                    "name": "eth0",
                    "mac": "00:11:22:33:44:66",
                    "sandbox": "/var/run/netns/blue"
                }
            ],
            "dns": {
              "nameservers": [ "10.1.0.1" ]
            }
          }
        }
        """

    /// ADD, step 2: `tuning`, with `sysctl` settings and a `runtimeConfig`.
    static let addTuning = """
        {
          "cniVersion": "1.0.0",
          "name": "dbnet",
          "type": "tuning",
          "sysctl": {
            "net.core.somaxconn": "500"
          },
          "runtimeConfig": {
            "mac": "00:11:22:33:44:66"
          },
          "prevResult": {
            "ips": [
                {
                  "address": "10.1.0.5/16",
                  "gateway": "10.1.0.1",
                  "interface": 2
                }
            ],
            "routes": [
              {
                "dst": "0.0.0.0/0"
              }
            ],
            "interfaces": [
                {
                    "name": "cni0",
                    "mac": "00:11:22:33:44:55"
                },
                {
                    "name": "veth3243",
                    "mac": "55:44:33:22:11:11"
                },
                {
                    "name": "eth0",
                    "mac": "99:88:77:66:55:44",
                    "sandbox": "/var/run/netns/blue"
                }
            ],
            "dns": {
              "nameservers": [ "10.1.0.1" ]
            }
          }
        }
        """

    /// CHECK, step 1: `bridge`, with its IPAM section and the final result
    /// of the ADD as `prevResult`.
    static let checkBridge = """
        {
          "cniVersion": "1.0.0",
          "name": "dbnet",
          "type": "bridge",
          "bridge": "cni0",
          "keyA": ["some more", "plugin specific", "configuration"],
          "ipam": {
            "type": "host-local",
            "subnet": "10.1.0.0/16",
            "gateway": "10.1.0.1"
          },
          "dns": {
            "nameservers": [ "10.1.0.1" ]
          },
          "prevResult": {
            "ips": [
                {
                  "address": "10.1.0.5/16",
                  "gateway": "10.1.0.1",
                  "interface": 2
                }
            ],
            "routes": [
              {
                "dst": "0.0.0.0/0"
              }
            ],
            "interfaces": [
                {
                    "name": "cni0",
                    "mac": "00:11:22:33:44:55"
                },
                {
                    "name": "veth3243",
                    "mac": "55:44:33:22:11:11"
                },
                {
                    "name": "eth0",
                    "mac": "00:11:22:33:44:66",
                    "sandbox": "/var/run/netns/blue"
                }
            ],
            "dns": {
              "nameservers": [ "10.1.0.1" ]
            }
          }
        }
        """

    /// ADD, step 1: the first plugin of the chain, which gets no `prevResult`.
    static let addBridge = """
        {
            "cniVersion": "1.0.0",
            "name": "dbnet",
            "type": "bridge",
            "bridge": "cni0",
            "keyA": ["some more", "plugin specific", "configuration"],
            "ipam": {
                "type": "host-local",
                "subnet": "10.1.0.0/16",
                "gateway": "10.1.0.1"
            },
            "dns": {
                "nameservers": [ "10.1.0.1" ]
            }
        }
        """

    /// The 0.4.0 specification's DEL example, whose `prevResult` has trailing
    /// commas: not JSON, and refused as such.
    static let delWithTrailingCommas = """
        {
          "cniVersion": "0.4.0",
          "name": "dbnet",
          "type": "tuning",
          "prevResult": {
            "interfaces": [
                {
                    "name": "cni0",
                    "mac": "00:11:22:33:44:55",
                }
            ]
          }
        }
        """

    /// The result the 1.0 spec's `host-local` returns: an IPAM result, with
    /// no `interfaces`.
    static let ipamResult = """
        {
            "ips": [
                {
                  "address": "10.1.0.5/16",
                  "gateway": "10.1.0.1"
                }
            ],
            "routes": [
              {
                "dst": "0.0.0.0/0"
              }
            ],
            "dns": {
              "nameservers": [ "10.1.0.1" ]
            }
        }
        """

    /// A spec example as this plugin gets it in a conflist: `type` and its
    /// own keys replace the example plugin's.
    static func asMeshAgentCNI(_ example: String, settings: [String: JSONValue] = [:]) -> [UInt8] {
        guard case .object(var members)? = try? JSONValue.parse(Array(example.utf8)) else { return [] }
        members["type"] = .string("mesh-agent-cni")
        for (key, value) in settings { members[key] = value }
        return JSONValue.object(members).encoded()
    }
}
