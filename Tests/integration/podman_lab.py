"""Real Podman on a lab node: a podman of its own per node (configuration,
store, locks, events, networks; notes/pods.md), run inside the node's network
namespace with nsenter, so its bridge, NAT rules and pods live there and not
on the machine. Images are made locally from busybox (no registry).

Everything a lab makes (pods, containers, the network, the image, the API
service, left-over cgroups, its directory) is removed by `close`, also after
a failure.
"""
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from conftest import START_TIMEOUT, cgroup2_mount, sh, wait_for

BUSYBOX = "/bin/busybox"


class PodmanNode:
    def __init__(self, directory, node_namespace, subnet, tag):
        """subnet: the third octet of this node's pod network (10.77.N.0/24)."""
        self.directory = Path(directory)
        self.node = node_namespace
        self.subnet = subnet
        self.tag = tag
        self.network = f"ma-{tag}"
        self.image = f"localhost/ma-busybox:{tag}"
        self.socket = self.directory / "podman.sock"
        self.service = None
        self.pods = []
        self.pod_ids = []
        self.made_image = False
        self.made_network = False
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            # No registry: pods (podman kube play's too) get an infra container from the local image.
            f'infra_image = "{self.image}"\n'
            'infra_command = "/bin/busybox sleep 3600"\n'
            'cgroup_manager = "cgroupfs"\n'
            f'tmp_dir = "{self.directory}/tmp"\n'
            'lock_type = "file"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.directory}/events.log"\n'
            "[network]\n"
            f'network_config_dir = "{self.directory}/networks"\n')
        (self.directory / "storage.conf").write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.directory}/graph"\n'
            f'runroot = "{self.directory}/run"\n')

    @property
    def env(self):
        return {**os.environ, "CONTAINERS_CONF": str(self.directory / "containers.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.directory / "storage.conf")}

    def podman(self, *args, check=True, timeout=60):
        result = subprocess.run(["nsenter", f"--net=/run/netns/{self.node}", "podman", *args],
                                capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def start(self):
        rootfs = self.directory / "rootfs"
        (rootfs / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
        (rootfs / "www").mkdir(exist_ok=True)
        (rootfs / "www" / "index.html").write_text("hello from a pod\n")
        sh("tar", "-C", str(rootfs), "-cf", str(self.directory / "rootfs.tar"), ".")
        # A default command, for the infra containers podman kube play makes.
        self.podman("import", "-q", "--change", 'CMD ["/bin/busybox", "sleep", "3600"]', str(self.directory / "rootfs.tar"), self.image)
        self.made_image = True
        self.podman("network", "create", "--disable-dns", "--subnet", f"10.77.{self.subnet}.0/24", self.network)
        self.made_network = True
        log = open(self.directory / "service.log", "w")
        self.service = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.node}", "podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            stdout=log, stderr=log, env=self.env)
        wait_for(lambda: self.socket.exists() or self.service.poll() is not None, timeout=START_TIMEOUT,
                 what="podman system service to make its socket")
        assert self.service.poll() is None, f"podman system service exited: {(self.directory / 'service.log').read_text()}"
        return self

    def pod(self, name, labels=None, ports=None):
        """A pod whose infra container sleeps (busybox has no pause); its id."""
        args = ["pod", "create", "--name", name, "--network", self.network, "--infra-image", self.image,
                "--infra-command", "/bin/busybox sleep 3600"]
        for key, value in sorted((labels or {}).items()):
            args += ["--label", f"{key}={value}"]
        pod_id = self.podman(*args).stdout.strip()
        self.pods.append(name)
        self.pod_ids.append(pod_id)
        self.podman("pod", "start", name)
        return pod_id

    def adopt_pod(self, name):
        """A pod made another way (podman kube play): removed by close too."""
        data = self.inspect_pod(name)
        data = data[0] if isinstance(data, list) else data
        self.pods.append(name)
        self.pod_ids.append(data["Id"])

    def run_in_pod(self, pod, *command, name=None):
        """A detached container in the pod, running command."""
        args = ["run", "-d", "--pod", pod]
        if name:
            args += ["--name", name]
        return self.podman(*args, self.image, *command).stdout.strip()

    def http_server(self, pod, port=8080):
        return self.run_in_pod(pod, "/bin/busybox", "httpd", "-f", "-p", str(port), "-h", "/www")

    def exec(self, container_or_pod_infra, *command, check=False, timeout=30):
        return self.podman("exec", container_or_pod_infra, *command, check=check, timeout=timeout)

    def fetch(self, pod_container, url, seconds=5):
        """busybox wget from inside a container (wget -T segfaults: bounded with timeout)."""
        return self.exec(pod_container, "/bin/busybox", "timeout", str(seconds), "/bin/busybox", "wget", "-q", "-O", "-", url,
                         timeout=seconds + 10)

    def inspect_pod(self, name):
        return json.loads(self.podman("pod", "inspect", name).stdout)

    def pod_ip(self, name):
        infra = self.inspect_pod(name)
        infra = infra[0] if isinstance(infra, list) else infra
        data = json.loads(self.podman("inspect", infra["InfraContainerID"]).stdout)[0]
        networks = data["NetworkSettings"]["Networks"]
        return networks[self.network]["IPAddress"]

    def remove_pod(self, name):
        self.podman("pod", "rm", "-f", "-t", "0", name, check=False)
        if name in self.pods:
            index = self.pods.index(name)
            self.pods.pop(index)
            self._remove_cgroups(self.pod_ids.pop(index))

    def _remove_cgroups(self, pod_id):
        # notes/pods.md: removing a pod leaves empty /libpod_parent/<pod-id> directories.
        for root in {cgroup2_mount(), "/sys/fs/cgroup/systemd"}:
            path = Path(root) / "libpod_parent" / pod_id
            for _ in range(50):
                if not path.exists():
                    break
                try:
                    for child in sorted(path.glob("**/"), key=lambda p: len(p.parts), reverse=True):
                        if child != path:
                            child.rmdir()
                    path.rmdir()
                except OSError:
                    time.sleep(0.1)

    def close(self):
        for name in list(self.pods):
            self.remove_pod(name)
        if self.service is not None and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()
        if self.made_network:
            self.podman("network", "rm", "-f", self.network, check=False)
        if self.made_image:
            self.podman("rmi", "-f", self.image, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)
