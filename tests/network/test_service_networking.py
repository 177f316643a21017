"""Service networking end to end: real containers on three lab hosts (issue 9).

One manager (drained) and two workers on the test containerd, the busybox
image, and a client host outside the cluster. The web server is busybox's
httpd; its page is the container's hostname (the first 12 characters of the
task ID), so every answer says which replica served it.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos import netlab
from chaos.netlab import Lab
from support import wait_for

from network.service_lab import WARREN, ServiceLab
from warren.devtools.containerd import LocalContainerd, missing_binaries
from warren.devtools.image import build_busybox_image

pytestmark = pytest.mark.integration

# /cgi-bin/ip answers with the client's address as the server saw it.
CGI_IP = "#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho -n $REMOTE_ADDR\\n"
WEB = (
    "mkdir -p /www/cgi-bin && hostname > /www/index.html && "
    f"printf '{CGI_IP}' > /www/cgi-bin/ip && chmod +x /www/cgi-bin/ip && "
    "exec httpd -f -p 80 -h /www"
)
SLEEPER = "exec sleep 3600"


def get(host: str, path: str = "/", port: int = 80) -> str:
    """A shell command that GETs ``path`` and prints the answer's last line (the
    page). busybox's nc: the image's static wget crashes (SIGSEGV) here."""
    return f"printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} | tail -n 1"


@pytest.fixture(scope="module")
def containerd() -> Iterator[LocalContainerd]:
    problems = missing_binaries()
    if not Path("/bin/busybox").exists():
        problems.append("/bin/busybox (busybox-static)")
    reason = netlab.unavailable_reason()
    if reason:
        problems.append(reason)
    if problems:
        pytest.fail("service networking tests need: " + ", ".join(problems), pytrace=False)
    with LocalContainerd() as ctd:
        yield ctd
    for parent in Path("/sys/fs/cgroup").glob("*/warren"):
        with contextlib.suppress(OSError):
            parent.rmdir()


@pytest.fixture(scope="module")
def site(
    containerd: LocalContainerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceLab, str]]:
    """The cluster, shared by the module's tests (each removes its services)."""
    root = tmp_path_factory.mktemp("svcnet")
    archive = build_busybox_image(root / "busybox-oci.tar")
    socket = Path(containerd.socket)
    prefix = f"svcnet-{secrets.token_hex(3)}"
    with Lab() as lab:
        cluster = ServiceLab(lab, root, socket, prefix, workers=("w1", "w2"))
        try:
            images = {
                _import_image(archive, socket, cluster.namespace(node), root / f"import-{node}")
                for node in cluster.hosts
            }
            (image,) = images
            cluster.start()
            yield cluster, image
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.remove_everything()
        leftovers = _leftovers(lab)
    assert not leftovers, leftovers


def _import_image(archive: Path, socket: Path, namespace: str, data_dir: Path) -> str:
    result = subprocess.run(
        [*WARREN, "image", "import", str(archive), "--containerd-socket", str(socket),
         "--containerd-namespace", namespace, "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split()[0]


def _leftovers(lab: Lab) -> list[str]:
    """What the nodes left on their hosts (interfaces, nftables tables, processes
    such as wireguard-go) after their services went and they stopped."""
    found: list[str] = []
    for host in lab.hosts:
        links = host.run(["ip", "-o", "link", "show"]).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
        found += [f"{host.name}: link {n}" for n in names if n not in ("lo", "eth0")]
        tables = host.run(["nft", "list", "tables"]).stdout.split("\n")
        found += [f"{host.name}: nft {t}" for t in tables if t.strip()]
        pids = netlab.pids_in_netns(netlab._netns_id(host.netns) or (0, 0))
        found += [f"{host.name}: process {_command(pid)}" for pid in pids]
    return found


def _command(pid: int) -> str:
    try:
        return f"{pid} " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


@pytest.fixture
def cluster(site: tuple[ServiceLab, str]) -> Iterator[ServiceLab]:
    lab = site[0]
    yield lab
    for service in lab.json("service", "ls"):
        lab.cli("service", "rm", service["id"], check=False)
    for network in lab.json("network", "ls"):
        if network["spec"]["name"] != "default":
            wait_for(
                lambda n=network["id"]: lab.cli("network", "rm", n, check=False).returncode == 0,
                30,
                f"network {network['spec']['name']} to be removable",
            )


@pytest.fixture
def image(site: tuple[ServiceLab, str]) -> str:
    return site[1]


def create(cluster: ServiceLab, image: str, name: str, script: str, *flags: str) -> None:
    cluster.cli("service", "create", name, "--image", image, *flags, "--", "sh", "-c", script)


def placed(cluster: ServiceLab, service: str, count: int) -> dict[str, list[str]]:
    """Node name -> container IDs of the service's running tasks."""
    names = cluster.node_names()
    out: dict[str, list[str]] = {}
    for task in cluster.wait_running(service, count):
        out.setdefault(names[task["node_id"]], []).append(task["status"]["container_id"])
    return out


def in_container(cluster: ServiceLab, node: str, container: str, script: str) -> str:
    result = cluster.exec(node, container, script)
    assert result.returncode == 0, f"{script}: {result.stdout} {result.stderr}"
    return result.stdout


def fetch_until(cluster: ServiceLab, node: str, container: str, host: str, want: str) -> None:
    def answered() -> bool:
        return want in cluster.exec(node, container, get(host)).stdout

    wait_for(answered, 30, f"{host} from {node} to answer {want!r}")


# -- names and addresses ---------------------------------------------------------------------


def test_a_container_resolves_a_service_and_reaches_a_replica_on_another_node(
    cluster: ServiceLab, image: str
) -> None:
    create(cluster, image, "web", WEB, "--replicas", "2", "--max-replicas-per-node", "1")
    create(cluster, image, "probe", SLEEPER, "--constraint", "node.hostname==w1")
    cluster.cli("network", "create", "other")
    create(cluster, image, "hidden", WEB, "--network", "other")
    web = placed(cluster, "web", 2)
    (probe,) = placed(cluster, "probe", 1)["w1"]
    (remote,) = web["w2"]
    fetch_until(cluster, "w1", probe, "web", remote[:12])
    fetch_until(cluster, "w1", probe, "web.default", remote[:12])
    # Hairpin: a replica reaching its own service is answered by itself too.
    (local,) = web["w1"]
    fetch_until(cluster, "w1", local, "web", local[:12])

    addresses = {t["networks"][0]["address"].split("/")[0] for t in cluster.running_tasks("web")}
    listed = in_container(cluster, "w1", probe, "nslookup tasks.web")
    assert addresses <= set(re.findall(r"\d+\.\d+\.\d+\.\d+", listed)), listed
    assert cluster.exec("w1", probe, "nslookup no-such-service").returncode != 0
    assert cluster.exec("w1", probe, "nslookup hidden").returncode != 0


def test_new_connections_through_a_vip_spread_over_the_replicas(
    cluster: ServiceLab, image: str
) -> None:
    create(cluster, image, "spread", WEB, "--replicas", "3")
    create(cluster, image, "probe", SLEEPER, "--constraint", "node.hostname==w1")
    replicas = [c for cs in placed(cluster, "spread", 3).values() for c in cs]
    (probe,) = placed(cluster, "probe", 1)["w1"]
    fetch_until(cluster, "w1", probe, "spread", "")
    script = f"for i in $(seq 300); do {get('spread')}; done"
    answers = Counter(line for line in in_container(cluster, "w1", probe, script).split() if line)
    assert sum(answers.values()) == 300, answers
    for replica in replicas:
        assert 60 <= answers[replica[:12]] <= 140, answers


def test_an_unhealthy_replica_leaves_the_vip(cluster: ServiceLab, image: str) -> None:
    create(cluster, image, "fragile", WEB, "--replicas", "2", "--max-replicas-per-node", "1",
           "--health-cmd", "test ! -f /tmp/sick", "--health-interval", "1s",
           "--health-retries", "1")  # fmt: skip
    create(cluster, image, "probe", SLEEPER, "--constraint", "node.hostname==w1")
    wait_for(
        lambda: (
            all(t["status"].get("health") == "healthy" for t in cluster.running_tasks("fragile"))
            and len(cluster.running_tasks("fragile")) == 2
        ),
        60,
        "two healthy replicas",
    )
    sick_node, sick = next(iter((n, cs[0]) for n, cs in placed(cluster, "fragile", 2).items()))
    (probe,) = placed(cluster, "probe", 1)["w1"]
    in_container(cluster, sick_node, sick, "touch /tmp/sick")
    wait_for(
        lambda: (
            not any(
                t["status"]["container_id"] == sick and t["status"].get("health") == "healthy"
                for t in cluster.running_tasks("fragile")
            )
        ),
        30,
        "the sick replica to be reported unhealthy",
    )
    time.sleep(1)  # the node applies the view the manager sends (debounced)
    script = f"for i in $(seq 40); do {get('fragile')}; done"
    answers = in_container(cluster, "w1", probe, script).split()
    assert answers and sick[:12] not in answers, answers


# -- published ports ---------------------------------------------------------------------------


def test_an_ingress_port_answers_on_every_node(cluster: ServiceLab, image: str) -> None:
    create(cluster, image, "pub", WEB, "--replicas", "2", "--max-replicas-per-node", "1",
           "--publish", "8080:80")  # fmt: skip
    replicas = {c[:12] for cs in placed(cluster, "pub", 2).values() for c in cs}
    seen: set[str] = set()
    for node, host in cluster.hosts.items():
        url = f"http://{host.address}:8080/"

        def answered(url: str = url) -> bool:
            out = cluster.client.run(["curl", "-s", "-m", "3", url]).stdout.strip()
            seen.add(out)
            return out in replicas

        wait_for(answered, 30, f"port 8080 on {node}")
    for _ in range(20):
        seen.add(cluster.client.run(["curl", "-s", "-m", "3", url]).stdout.strip())
    assert replicas <= seen, seen


def test_a_host_mode_port_answers_only_where_a_task_runs_with_the_clients_address(
    cluster: ServiceLab, image: str
) -> None:
    create(cluster, image, "direct", WEB, "--constraint", "node.hostname==w2",
           "--publish", "published=8081,target=80,mode=host")  # fmt: skip
    placed(cluster, "direct", 1)
    w2 = cluster.hosts["w2"].address

    def seen_from() -> str:
        url = f"http://{w2}:8081/cgi-bin/ip"
        return cluster.client.run(["curl", "-s", "-m", "3", url]).stdout.strip()

    # httpd listens on IPv6 too: it shows an IPv4 client as [::ffff:a.b.c.d].
    wait_for(seen_from, 30, "the host-mode port to answer")
    assert seen_from() in (cluster.client.address, f"[::ffff:{cluster.client.address}]")
    w1 = cluster.hosts["w1"].address
    refused = cluster.client.run(["curl", "-s", "-m", "3", f"http://{w1}:8081/"])
    assert refused.returncode != 0


def test_a_taken_published_port_is_refused(cluster: ServiceLab, image: str) -> None:
    create(cluster, image, "first", WEB, "--publish", "8082:80")
    result = cluster.cli("service", "create", "second", "--image", image, "--publish", "8082:80",
                         check=False)  # fmt: skip
    assert result.returncode != 0 and "8082" in result.stderr
    assert "second" not in {s["spec"]["name"] for s in cluster.json("service", "ls")}


# -- isolation and encryption -------------------------------------------------------------------


def test_networks_are_isolated_both_ways_and_a_task_on_both_reaches_both(
    cluster: ServiceLab, image: str
) -> None:
    cluster.cli("network", "create", "left")
    cluster.cli("network", "create", "right")
    create(cluster, image, "lsrv", WEB, "--network", "left", "--constraint", "node.hostname==w1")
    create(cluster, image, "rsrv", WEB, "--network", "right", "--constraint", "node.hostname==w2")
    create(cluster, image, "both", WEB, "--network", "left", "--network", "right",
           "--constraint", "node.hostname==w1")  # fmt: skip
    (left,) = placed(cluster, "lsrv", 1)["w1"]
    (right,) = placed(cluster, "rsrv", 1)["w2"]
    (both,) = placed(cluster, "both", 1)["w1"]
    address = {
        t["spec"]["name"]: t["networks"][0]["address"].split("/")[0]
        for name in ("lsrv", "rsrv")
        for t in cluster.running_tasks(name)
    }
    fetch_until(cluster, "w1", both, address["lsrv"], left[:12])
    fetch_until(cluster, "w1", both, address["rsrv"], right[:12])
    fetch_until(cluster, "w1", both, "lsrv", left[:12])
    fetch_until(cluster, "w1", both, "rsrv", right[:12])
    assert right[:12] not in cluster.exec("w1", left, get(address["rsrv"])).stdout
    assert left[:12] not in cluster.exec("w2", right, get(address["lsrv"])).stdout


def test_traffic_between_nodes_is_encrypted(cluster: ServiceLab, image: str) -> None:
    marker = f"warren-marker-{secrets.token_hex(8)}"
    create(cluster, image, "sink", "while true; do nc -l -p 9000 >> /tmp/got; done",
           "--constraint", "node.hostname==w2")  # fmt: skip
    create(cluster, image, "probe", SLEEPER, "--constraint", "node.hostname==w1")
    (sink,) = placed(cluster, "sink", 1)["w2"]
    (probe,) = placed(cluster, "probe", 1)["w1"]
    w1 = cluster.hosts["w1"]
    capture = cluster.root / f"underlay-{marker}.pcap"
    dump = w1.spawn(["tcpdump", "-i", "eth0", "-U", "-w", str(capture), "-s", "0"],
                    cluster.root / "tcpdump.log")  # fmt: skip
    try:
        time.sleep(1)

        def delivered() -> bool:
            cluster.exec("w1", probe, f"echo {marker} | nc -w 2 sink 9000")
            return marker in cluster.exec("w2", sink, "cat /tmp/got").stdout

        wait_for(delivered, 30, "the marker to reach the sink")
        time.sleep(1)
    finally:
        w1.kill(dump, 2)
    data = capture.read_bytes()
    assert len(data) > 1000  # the capture saw the tunnel's packets
    assert marker.encode() not in data


# -- cut off from the managers ---------------------------------------------------------------


def test_a_worker_cut_off_from_the_managers_keeps_resolving_and_serving(
    cluster: ServiceLab, image: str
) -> None:
    create(cluster, image, "web", WEB, "--replicas", "2", "--max-replicas-per-node", "1")
    create(cluster, image, "probe", SLEEPER, "--constraint", "node.hostname==w1")
    web = placed(cluster, "web", 2)
    (probe,) = placed(cluster, "probe", 1)["w1"]
    fetch_until(cluster, "w1", probe, "web", web["w2"][0][:12])
    w1, m1 = cluster.hosts["w1"], cluster.hosts["m1"]
    w1.isolate(m1)
    try:
        wait_for(lambda: cluster.node_status("w1") == "down", 30, "w1 to be down")
        fetch_until(cluster, "w1", probe, "web", web["w2"][0][:12])
        fetch_until(cluster, "w1", probe, "web", web["w1"][0][:12])
    finally:
        w1.heal()
    wait_for(lambda: cluster.node_status("w1") == "ready", 60, "w1 to be back")


# -- the network doctor ------------------------------------------------------------------------


def test_the_network_doctor_finds_a_healthy_cluster_healthy(
    cluster: ServiceLab, image: str
) -> None:
    create(cluster, image, "web", WEB, "--replicas", "2", "--max-replicas-per-node", "1",
           "--publish", "8083:80")  # fmt: skip
    create(cluster, image, "probe", SLEEPER, "--constraint", "node.hostname==w1")
    web = placed(cluster, "web", 2)
    (probe,) = placed(cluster, "probe", 1)["w1"]
    fetch_until(cluster, "w1", probe, "web", web["w2"][0][:12])
    result = cluster.cli("network", "doctor", "-o", "json", check=False)
    reports = json.loads(result.stdout)
    rows = [(r["hostname"], c) for r in reports for c in r["checks"]]
    failed = [f"{node}: {c}" for node, c in rows if c["result"] == "fail"]
    assert result.returncode == 0 and not failed, failed
    assert {r["hostname"] for r in reports} == {"m1", "w1", "w2"}
    done = {(node, c["kind"]) for node, c in rows if c["result"] == "ok"}
    for node in ("m1", "w1", "w2"):
        assert {(node, "handshake"), (node, "round-trip"), (node, "path-mtu")} <= done, done
        assert (node, "published") in done, done  # ingress: every node answers
    # Names and VIPs are checked from a task's namespace, on the nodes running one.
    assert {("w1", "dns"), ("w1", "vip"), ("w2", "dns"), ("w2", "vip")} <= done, done


# -- a node restart ------------------------------------------------------------------------------


def test_a_node_restart_keeps_its_containers_traffic(cluster: ServiceLab, image: str) -> None:
    create(cluster, image, "web", WEB, "--replicas", "2", "--max-replicas-per-node", "1")
    create(cluster, image, "probe", SLEEPER, "--constraint", "node.hostname==w1")
    web = placed(cluster, "web", 2)
    (probe,) = placed(cluster, "probe", 1)["w1"]
    (service,) = cluster.json("service", "inspect", "web")
    vip = service["endpoint"]["vips"][0]["address"].split("/")[0]
    remote = web["w2"][0][:12]
    fetch_until(cluster, "w1", probe, vip, remote)
    pids = cluster.container_pids("w1")
    node = cluster.daemons["w1"]
    node.stop()
    try:
        # The data plane stays in the kernel: the VIP and the mesh keep serving
        # (names wait for the node: its DNS runs in its process).
        fetch_until(cluster, "w1", probe, vip, remote)
        fetch_until(cluster, "w1", probe, vip, web["w1"][0][:12])
    finally:
        node.start()
    wait_for(lambda: cluster.node_status("w1") == "ready", 60, "w1 to be back")
    fetch_until(cluster, "w1", probe, "web", remote)
    # The same containers, never restarted.
    assert cluster.container_pids("w1") == pids and probe in pids
