"""The deployment files: the Kubernetes manifests parse, hold what a node agent
needs, and carry a config the agent itself accepts. (No cluster here, so
kubectl cannot validate; the checks are structural, plus agentctl.)"""
import os
import subprocess

import yaml

from conftest import BIN, REPO

MANIFEST = REPO / "deploy" / "kubernetes" / "mesh-agent.yaml"


def documents():
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def by_kind(kind):
    found = [d for d in documents() if d["kind"] == kind]
    assert found, f"no {kind} in {MANIFEST}"
    return found


CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}


def test_every_document_is_a_kubernetes_object_in_the_agents_namespace_or_cluster_wide():
    expected = {"ServiceAccount": "v1", "ClusterRole": "rbac.authorization.k8s.io/v1",
                "ClusterRoleBinding": "rbac.authorization.k8s.io/v1", "ConfigMap": "v1", "DaemonSet": "apps/v1"}
    kinds = set()
    for doc in documents():
        assert doc["apiVersion"] == expected[doc["kind"]], doc["kind"]
        assert doc["metadata"]["name"], doc["metadata"]
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], f"a {doc['kind']} has no namespace"
        else:
            assert doc["metadata"]["namespace"] == "mesh-agent", doc["metadata"]
        kinds.add(doc["kind"])
    assert kinds == set(expected)


def test_rbac_reads_pods_and_namespaces_and_nothing_else():
    (role,) = by_kind("ClusterRole")
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("", resource, verb) for resource in ("pods", "namespaces") for verb in ("get", "list", "watch")}
    assert all(set(rule) == {"apiGroups", "resources", "verbs"} for rule in role["rules"]), "no resourceNames, no nonResourceURLs"

    (binding,) = by_kind("ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    account = by_kind("ServiceAccount")[0]["metadata"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}]
    pod = by_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["name"]
    assert pod["automountServiceAccountToken"] is True, "the Kubernetes source uses the in-cluster token and CA"


def test_the_daemonset_runs_one_host_network_agent_with_least_privilege_and_probes():
    daemonset = by_kind("DaemonSet")[0]
    template = daemonset["spec"]["template"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    pod = template["spec"]
    assert pod["hostNetwork"] is True, "the agent programs the node's nftables and binds the node's ports"
    assert pod["serviceAccountName"] == by_kind("ServiceAccount")[0]["metadata"]["name"]
    assert pod["terminationGracePeriodSeconds"] > 30, "room for the 30 s drain"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "15020"

    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["privileged"] is False and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    # nftables and SO_MARK; setns into pods; /proc/PID/ns/net of pods' processes.
    assert set(security["capabilities"]["add"]) == {"NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
    assert pod["hostPID"] is True, "pod namespaces are found from host PIDs in the pods' cgroups"
    (node_name,) = [e for e in container["env"] if e["name"] == "NODE_NAME"]
    assert node_name["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz/ready", "port": 15021}, probe
    # An update surges: the new agent starts beside the old one and takes
    # its sockets over, which host ports (hostNetwork ports) would forbid,
    # through a handover socket both pods see.
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "ports" not in container

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    (init,) = pod["initContainers"]
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) | set(init_mounts) == set(volumes), "every mount has a volume and every volume is mounted"
    assert not set(mounts) & set(init_mounts), "the agent does not write the node's CNI files; only the init container does"
    assert volumes["cgroup"]["hostPath"]["path"] == "/sys/fs/cgroup" and mounts["cgroup"]["readOnly"] is True
    assert volumes["ca"]["secret"]["defaultMode"] == 0o400, "the node CA key is readable by root only"
    config = yaml.safe_load(next(d for d in by_kind("ConfigMap") if "agent.yaml" in d["data"])["data"]["agent.yaml"])
    run = next(m for m in container["volumeMounts"] if config["adminSocket"].startswith(m["mountPath"] + "/"))
    assert volumes[run["name"]]["hostPath"]["path"] == run["mountPath"], "the handover socket must be shared by both pods"
    config_map_names = {d["metadata"]["name"] for d in by_kind("ConfigMap")}
    for volume in volumes.values():
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_map_names


def test_the_init_container_chains_mesh_agent_cni_on_the_node_with_the_agents_socket():
    pod = by_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (agent,) = pod["containers"]
    assert init["image"] == agent["image"], "the plugin installed is the one built with the agent"
    command = init["command"]
    assert command[0].endswith("/mesh-agent-cni") and command[1] == "install"
    config = yaml.safe_load(next(d for d in by_kind("ConfigMap") if "agent.yaml" in d["data"])["data"]["agent.yaml"])
    socket = config["workloadSources"]["cni"]["socket"]
    assert command[2:] == ["--agent-socket", socket]
    # The runtime on the node connects to the socket: it must be on the host.
    volumes = {v["name"]: v for v in pod["volumes"]}
    run = next(m for m in agent["volumeMounts"] if socket.startswith(m["mountPath"] + "/"))
    assert volumes[run["name"]]["hostPath"]["path"] == run["mountPath"]
    # The plugin's default directories, mounted from the same host paths.
    mounts = {m["mountPath"]: volumes[m["name"]]["hostPath"]["path"] for m in init["volumeMounts"]}
    assert mounts == {"/opt/cni/bin": "/opt/cni/bin", "/etc/cni/net.d": "/etc/cni/net.d"}
    assert all(not m.get("readOnly") for m in init["volumeMounts"])
    security = init["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_the_agent_config_captures_pods_from_the_api_and_the_cni_plugin():
    config = yaml.safe_load(next(d for d in by_kind("ConfigMap") if "agent.yaml" in d["data"])["data"]["agent.yaml"])
    assert config["captureMode"] == "netns"
    assert config["workloadSources"]["kubernetes"] == {}, "node from NODE_NAME, API server, token and CA in-cluster"
    assert "node" not in config, "the node name comes from NODE_NAME (spec.nodeName)"
    assert config["meshNetworks"], "the pod CIDR"
    assert "workloads" not in config


def test_the_agent_config_in_the_configmap_is_one_the_agent_accepts(tmp_path):
    config = next(d for d in by_kind("ConfigMap") if "agent.yaml" in d["data"])["data"]["agent.yaml"]
    path = tmp_path / "agent.yaml"
    path.write_text(config)
    checked = subprocess.run([str(BIN / "agentctl"), "config", "check", str(path)], capture_output=True, text=True, timeout=30,
                             env={**os.environ, "NODE_NAME": "worker-3"})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    daemonset = by_kind("DaemonSet")[0]
    command = daemonset["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-1] == "/etc/mesh-agent/agent.yaml" and "agent.yaml" in str(daemonset)


def test_the_policies_in_the_configmap_are_peer_authentications():
    policies = next(d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "mesh-agent-policies")["data"]
    for name, text in policies.items():
        for doc in yaml.safe_load_all(text):
            assert doc["apiVersion"] == "security.istio.io/v1" and doc["kind"] == "PeerAuthentication", name
            assert doc["spec"]["mtls"]["mode"] in ("STRICT", "PERMISSIVE", "DISABLE", "UNSET"), name


def test_make_install_puts_every_file_where_the_docs_say(tmp_path):
    root = tmp_path / "root"
    subprocess.run(["make", "-s", "-C", str(REPO), "install-files", f"DESTDIR={root}", "PREFIX=/usr/local", f"RELEASE_BIN={BIN}"],
                   check=True, capture_output=True, text=True, timeout=120)
    # mesh-agent-cni too: the DaemonSet's init container installs it from the image.
    for path in ["usr/local/bin/mesh-agent", "usr/local/bin/agentctl", "usr/local/bin/mesh-agent-cni"]:
        assert (root / path).stat().st_mode & 0o111, path
    unit = (root / "etc/systemd/system/mesh-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/mesh-agent" in unit
    assert (root / "etc/mesh-agent/agent.yaml.example").exists()
    policies = sorted(p.name for p in (root / "etc/mesh-agent/policies.example").iterdir())
    assert "authorization.yaml" in policies and "peer-authentication.yaml" in policies
    assert (root / "etc/logrotate.d/mesh-agent").exists()
    bash = (root / "usr/local/share/bash-completion/completions/agentctl").read_text()
    assert "policy" in bash and "explain" in bash
    assert (root / "usr/local/share/zsh/site-functions/_agentctl").read_text().startswith("#compdef agentctl")
    # The installed example policies are valid as shipped.
    subprocess.run([str(BIN / "agentctl"), "policy", "check", str(root / "etc/mesh-agent/policies.example")], check=True,
                   capture_output=True, timeout=30)
