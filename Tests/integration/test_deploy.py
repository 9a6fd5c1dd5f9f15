"""The deployment files: the Kubernetes manifests parse, hold what a node agent
needs, and carry a config the agent itself accepts. (No cluster here, so
kubectl cannot validate; the checks are structural, plus agentctl.)"""
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


def test_every_document_is_a_namespaced_kubernetes_object():
    expected = {"ServiceAccount": "v1", "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
                "ConfigMap": "v1", "DaemonSet": "apps/v1"}
    kinds = set()
    for doc in documents():
        assert doc["apiVersion"] == expected[doc["kind"]], doc["kind"]
        assert doc["metadata"]["namespace"] == "mesh-agent" and doc["metadata"]["name"], doc["metadata"]
        kinds.add(doc["kind"])
    assert kinds == set(expected)


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
    assert set(security["capabilities"]["add"]) == {"NET_ADMIN", "SYS_ADMIN"}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz/ready", "port": 15021}, probe
    # An update surges: the new agent starts beside the old one and takes
    # its sockets over, which host ports (hostNetwork ports) would forbid,
    # through a handover socket both pods see.
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert "ports" not in container

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == set(volumes), "every mount has a volume and every volume is mounted"
    assert volumes["cgroup"]["hostPath"]["path"] == "/sys/fs/cgroup" and mounts["cgroup"]["readOnly"] is True
    assert volumes["ca"]["secret"]["defaultMode"] == 0o400, "the node CA key is readable by root only"
    config = yaml.safe_load(next(d for d in by_kind("ConfigMap") if "agent.yaml" in d["data"])["data"]["agent.yaml"])
    run = next(m for m in container["volumeMounts"] if config["adminSocket"].startswith(m["mountPath"] + "/"))
    assert volumes[run["name"]]["hostPath"]["path"] == run["mountPath"], "the handover socket must be shared by both pods"
    config_map_names = {d["metadata"]["name"] for d in by_kind("ConfigMap")}
    for volume in volumes.values():
        if "configMap" in volume:
            assert volume["configMap"]["name"] in config_map_names


def test_the_agent_config_in_the_configmap_is_one_the_agent_accepts(tmp_path):
    config = next(d for d in by_kind("ConfigMap") if "agent.yaml" in d["data"])["data"]["agent.yaml"]
    path = tmp_path / "agent.yaml"
    path.write_text(config)
    checked = subprocess.run([str(BIN / "agentctl"), "config", "check", str(path)], capture_output=True, text=True, timeout=30)
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
    for path in ["usr/local/bin/mesh-agent", "usr/local/bin/agentctl"]:
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
