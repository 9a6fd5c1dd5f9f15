"""The stand-in Kubernetes API server (k8s_apiserver.py) speaks the list and
watch wire format the agent's Kubernetes source expects: checked here with
plain http.client, no agent and no root needed."""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import k8s_apiserver  # noqa: E402

NODE = "node-a"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


@pytest.fixture
def server():
    stand_in = k8s_apiserver.StandInAPIServer().start()
    try:
        yield stand_in
    finally:
        stand_in.stop()


def get(server, path, token=None):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, json.loads(body)


class Watch:
    """A watch request, read a line at a time."""

    def __init__(self, server, path):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.status
        assert self.response.getheader("Transfer-Encoding") == "chunked"

    def event(self):
        line = self.response.readline()
        assert line.endswith(b"\n"), f"no whole line: {line!r}"
        return json.loads(line)

    def ended(self):
        """The stream ended cleanly (its last chunk came)."""
        return self.response.read() == b"" and self.response.isclosed()

    def close(self):
        self.connection.close()


def pods_path(query=""):
    return f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}" + (f"&{query}" if query else "")


def wait_for(condition, what, timeout=5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_lists_only_this_nodes_pods_in_pages(server):
    server.set_namespace("shop", AMBIENT)
    mine = [server.add_pod(f"web-{i}", "shop", NODE, ports=[8080], ips=[f"10.77.1.{i}"]) for i in range(3)]
    server.add_pod("elsewhere", "shop", "node-b")
    status, body = get(server, pods_path())
    assert status == 200
    assert body["kind"] == "PodList"
    assert body["metadata"]["resourceVersion"] == server.resource_version
    assert sorted(item["metadata"]["uid"] for item in body["items"]) == sorted(mine)
    pod = body["items"][0]
    assert pod["spec"]["nodeName"] == NODE
    assert pod["spec"]["containers"][0]["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert pod["status"]["qosClass"] == "BestEffort"

    status, first = get(server, pods_path("limit=2"))
    assert len(first["items"]) == 2 and first["metadata"]["continue"]
    status, second = get(server, pods_path("limit=2&continue=" + first["metadata"]["continue"]))
    assert len(second["items"]) == 1 and "continue" not in second["metadata"]
    assert {i["metadata"]["uid"] for i in first["items"] + second["items"]} == set(mine)

    status, namespaces = get(server, "/api/v1/namespaces")
    assert namespaces["items"][0]["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"


def test_a_watch_replays_then_streams_changes(server):
    uid = server.add_pod("web", "shop", NODE)
    _, body = get(server, pods_path())
    version = body["metadata"]["resourceVersion"]
    server.modify_pod(uid, labels=AMBIENT)  # before the watch: replayed
    watch = Watch(server, pods_path(f"watch=1&resourceVersion={version}&allowWatchBookmarks=true"))
    try:
        replayed = watch.event()
        assert replayed["type"] == "MODIFIED"
        assert replayed["object"]["metadata"]["labels"] == AMBIENT
        server.add_pod("other-node", "shop", "node-b")  # filtered out
        server.delete_pod(uid)
        deleted = watch.event()
        assert deleted["type"] == "DELETED" and deleted["object"]["metadata"]["uid"] == uid
        assert int(deleted["object"]["metadata"]["resourceVersion"]) > int(replayed["object"]["metadata"]["resourceVersion"])
        server.bookmark()
        bookmark = watch.event()
        assert bookmark == {"type": "BOOKMARK", "object": bookmark["object"]}
        assert bookmark["object"]["metadata"]["resourceVersion"] == server.resource_version
    finally:
        watch.close()


def test_namespace_watch(server):
    server.set_namespace("shop")
    watch = Watch(server, f"/api/v1/namespaces?watch=1&resourceVersion={server.resource_version}")
    try:
        server.set_namespace("shop", AMBIENT)
        event = watch.event()
        assert event["type"] == "MODIFIED"
        assert event["object"]["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
        server.delete_namespace("shop")
        assert watch.event()["type"] == "DELETED"
    finally:
        watch.close()


def test_compacted_history_is_410_gone(server):
    server.add_pod("web", "shop", NODE)
    old = server.resource_version
    watch = Watch(server, pods_path(f"watch=1&resourceVersion={old}"))
    try:
        wait_for(lambda: server.open_watches == 1, "the watch to open")
        server.expire()
        error = watch.event()
        assert error["type"] == "ERROR"
        assert error["object"]["code"] == 410 and error["object"]["reason"] == "Expired"
        assert watch.ended()
    finally:
        watch.close()
    # A new watch from the old version is told the same at once...
    late = Watch(server, pods_path(f"watch=1&resourceVersion={old}"))
    try:
        assert late.event()["object"]["code"] == 410
        assert late.ended()
    finally:
        late.close()
    # ...or, if asked, with the HTTP status itself.
    server.gone_as_http_status = True
    status, body = get(server, pods_path(f"watch=1&resourceVersion={old}"))
    assert status == 410 and body["code"] == 410
    # A list gives a version that can be watched again.
    _, body = get(server, pods_path())
    server.add_pod("after", "shop", NODE)
    fresh = Watch(server, pods_path(f"watch=1&resourceVersion={body['metadata']['resourceVersion']}"))
    try:
        assert fresh.event()["object"]["metadata"]["name"] == "after"
    finally:
        fresh.close()


def test_timeout_seconds_ends_the_stream(server):
    watch = Watch(server, pods_path(f"watch=1&resourceVersion={server.resource_version}&timeoutSeconds=1"))
    try:
        started = time.monotonic()
        assert watch.ended()
        assert 0.5 < time.monotonic() - started < 5
    finally:
        watch.close()


def test_periodic_bookmarks():
    with k8s_apiserver.StandInAPIServer(bookmark_interval=0.2) as server:
        watch = Watch(server, pods_path(f"watch=1&resourceVersion={server.resource_version}&allowWatchBookmarks=true"))
        try:
            assert watch.event()["type"] == "BOOKMARK"
        finally:
            watch.close()


def test_dropped_watches_break_without_an_end(server):
    watch = Watch(server, pods_path(f"watch=1&resourceVersion={server.resource_version}"))
    try:
        wait_for(lambda: server.open_watches == 1, "the watch to open")
        server.drop_watches()
        with pytest.raises(http.client.IncompleteRead):
            watch.response.read()
    finally:
        watch.close()


def test_a_required_token(server):
    server.token = "secret"
    status, body = get(server, pods_path())
    assert status == 401 and body["reason"] == "Unauthorized"
    status, _ = get(server, pods_path(), token="wrong")
    assert status == 401
    status, _ = get(server, pods_path(), token="secret")
    assert status == 200
    assert server.requests[-1] == (pods_path(), "Bearer secret")


def test_restart_keeps_state_and_port(server):
    uid = server.add_pod("web", "shop", NODE)
    version = server.resource_version
    port = server.port
    server.stop()
    with pytest.raises(ConnectionRefusedError):
        get(server, pods_path())
    server.add_pod("while-down", "shop", NODE)
    server.start()
    assert server.port == port
    _, body = get(server, pods_path())
    assert {i["metadata"]["name"] for i in body["items"]} == {"web", "while-down"}
    watch = Watch(server, pods_path(f"watch=1&resourceVersion={version}"))
    try:
        assert watch.event()["object"]["metadata"]["name"] == "while-down"
    finally:
        watch.close()
    assert uid in server.pods()


def test_only_loopback():
    with pytest.raises(ValueError):
        k8s_apiserver.StandInAPIServer(host="0.0.0.0")


def test_driven_from_another_process():
    with tempfile.TemporaryDirectory() as directory:
        control = os.path.join(directory, "control.sock")
        process = subprocess.Popen(
            [sys.executable, k8s_apiserver.__file__, "--control", control],
            stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(process.stdout.readline())
            client = k8s_apiserver.ControlClient(control)
            uid = client.add_pod(name="web", namespace="shop", node=NODE, labels=AMBIENT)
            client.set_namespace(name="shop", labels=AMBIENT)
            connection = http.client.HTTPConnection("127.0.0.1", ready["port"], timeout=10)
            connection.request("GET", pods_path())
            body = json.loads(connection.getresponse().read())
            connection.close()
            assert [i["metadata"]["uid"] for i in body["items"]] == [uid]
            with pytest.raises(RuntimeError, match="KeyError"):
                client.delete_pod(uid="no-such-pod")
            client.stop()
            assert client.start() == ready["port"]
            assert client.resource_version() == body["metadata"]["resourceVersion"]
            client.close()
        finally:
            process.kill()
            process.wait()
