"""A throwaway network lab: one network namespace per "host", all on one bridge.

Layout (nothing is created in the root network namespace)::

    <prefix>-br   netns holding bridge "br0" and the switch-side veth ends v0, v1, ...
    <prefix>-a    netns for host "a": lo + eth0 (peer of v0), address from the subnet
    <prefix>-b    ...

Each lab has its own bridge netns, so labs running in parallel may even reuse the same
subnet without seeing each other. Partitions are nftables rules inside the host
namespaces; link failures are the switch-side veth going down; message faults (delay,
jitter, loss, duplication, reordering) are a ``tc netem`` qdisc on a host's eth0, so
they hit everything the host sends.

Everything is torn down by ``Lab.close()`` (also via the context manager and atexit);
``sweep_stale()`` removes leftovers of crashed runs whose owning process is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

NETNS_DIR = Path("/run/netns")
PREFIX_ROOT = "wlab"
# Default prefixes look like "wlab-<owner pid>-<6 hex>"; the sweep relies on this shape.
_STALE_RE = re.compile(rf"^{PREFIX_ROOT}-(\d+)-[0-9a-f]{{6}}(?:-|$)")
_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,40}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_BRIDGE = "br0"
_HOST_IF = "eth0"

_open_labs: set[Lab] = set()


def unavailable_reason() -> str | None:
    """Why the lab cannot run here (not root, tools missing), or None if it can."""
    if os.geteuid() != 0:
        return "network lab needs root"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"network lab needs {', '.join(missing)}"
    return None


@functools.cache
@functools.cache
def netem_available() -> bool:
    """Whether ``tc netem`` runs here: tries a netem qdisc on a veth in a scratch
    namespace (modprobe first; the kernel may lack sch_netem). Asked once."""
    if shutil.which("tc") is None:
        return False
    if shutil.which("modprobe") is not None:
        subprocess.run(["modprobe", "sch_netem"], capture_output=True, timeout=30)
    scratch = f"{PREFIX_ROOT}-{os.getpid()}-{secrets.token_hex(3)}-netem"
    try:
        _sh(["ip", "netns", "add", scratch])
        _sh(["ip", "-n", scratch, "link", "add", "nem0", "type", "veth", "peer", "name", "nem1"])
        tried = subprocess.run(
            ["ip", "netns", "exec", scratch, "tc", "qdisc", "add", "dev", "nem0",
             "root", "netem", "delay", "1ms"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    finally:
        _delete_netns(scratch)
    return tried.returncode == 0


def fault_engine() -> str:
    """What ``Host.netem`` uses: tc netem, or (a kernel without sch_netem, as this
    project's CI machines) nftables for loss and duplication and an HTB class for
    delay and reordering."""
    return "tc netem" if netem_available() else "nftables + htb"


def netem_unavailable_reason() -> str | None:
    """Why message faults cannot run here, or None if they can (either engine)."""
    if shutil.which("tc") is None:
        return "message faults need tc (iproute2)"
    if shutil.which("nft") is None and not netem_available():
        return "message faults need tc netem or nftables"
    return None


def _sh(args: Sequence[str], input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(args), input=input, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _netns_id(netns: str) -> tuple[int, int] | None:
    """(dev, inode) of a named namespace, comparable with /proc/PID/ns/net."""
    try:
        st = os.stat(NETNS_DIR / netns)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(ns_id: tuple[int, int]) -> list[int]:
    """Every process whose network namespace is ns_id (what `ip netns pids` does)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:  # exited meanwhile, or a kernel thread
            continue
        if (st.st_dev, st.st_ino) == ns_id:
            pids.append(int(entry.name))
    return pids


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL everything inside netns, until it is empty (children may fork meanwhile)."""
    ns_id = _netns_id(netns)
    if ns_id is None:
        return
    me = os.getpid()
    for _ in range(50):
        pids = [pid for pid in pids_in_netns(ns_id) if pid != me]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise RuntimeError(f"processes in {netns} survive SIGKILL")


def _delete_netns(netns: str) -> None:
    _kill_netns_processes(netns)
    if (NETNS_DIR / netns).exists():
        _sh(["ip", "netns", "delete", netns], check=False)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete lab namespaces left by crashed runs (owner pid dead). Returns their names.

    Labs of live processes (e.g. a parallel pytest) are left alone. nft tables live in
    the host namespaces and veths in the bridge namespace, so they go with them.
    """
    if not NETNS_DIR.is_dir():
        return []
    removed = []
    for entry in sorted(os.listdir(NETNS_DIR)):
        match = _STALE_RE.match(entry)
        if match is None or _owner_alive(int(match.group(1))):
            continue
        _delete_netns(entry)
        removed.append(entry)
    return removed


class Host:
    """One namespace on the lab bridge. Create with ``Lab.add_host``."""

    def __init__(self, lab: Lab, name: str, netns: str, address: str, port: str) -> None:
        self.name = name
        self.netns = netns
        self.address = address
        self._lab = lab
        self._port = port  # switch-side veth end, in the bridge netns
        self._procs: list[subprocess.Popen[bytes]] = []
        self._blocked: set[str] = set()
        self._netem = ""  # the netem options in force on eth0, "" for none
        self._emulated = False  # in force through nftables + htb (no sch_netem)

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.address})"

    # -- processes -----------------------------------------------------------------

    def exec_prefix(self) -> list[str]:
        """What runs a command inside the host. `ip netns exec` execs the command in
        place, so a child started with it has the command's own pid (and group)."""
        return ["ip", "netns", "exec", self.netns]

    def _exec(self, args: Sequence[str]) -> list[str]:
        return [*self.exec_prefix(), *args]

    def spawn(
        self, args: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start args inside the host (stdout+stderr appended to log), in its own session.

        env is the child's whole environment (Popen semantics; None inherits ours).
        `ip netns exec` execs the command in place, so proc.pid is the command itself.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self._exec(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def run(
        self, args: Sequence[str], timeout: float = 30, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a one-off command inside the host and capture its output (text)."""
        proc = subprocess.Popen(
            self._exec(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            # Kill the whole group, not just the leader, so nothing lingers in the netns.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        result = subprocess.CompletedProcess(list(args), proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal proc's process group; with SIGKILL also reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            proc.wait(timeout=10)

    # -- faults --------------------------------------------------------------------

    def _nft(self, script: str) -> None:
        _sh(self._exec(["nft", "-f", "-"]), input=script)

    def isolate(self, *others: Host) -> None:
        """Drop all IPv4 traffic between this host and others, both ways (cumulative).

        Rules live only in this host's namespace: input drops from them, output drops
        to them. ARP still flows, so healing is instant (no neighbour re-resolution).
        """
        self._blocked |= {o.address for o in others if o is not self}
        if not self._blocked:
            return
        table = self._lab.prefix
        addrs = ", ".join(sorted(self._blocked, key=ipaddress.ip_address))
        # "create-empty, delete, recreate" replaces the table atomically in one
        # transaction whether or not it existed, which makes isolate idempotent.
        self._nft(
            f"table inet {table} {{}}\n"
            f"delete table inet {table}\n"
            f"table inet {table} {{\n"
            f"  chain input {{\n"
            f"    type filter hook input priority filter; policy accept;\n"
            f"    ip saddr {{ {addrs} }} drop\n"
            f"  }}\n"
            f"  chain output {{\n"
            f"    type filter hook output priority filter; policy accept;\n"
            f"    ip daddr {{ {addrs} }} drop\n"
            f"  }}\n"
            f"}}\n"
        )

    def heal(self) -> None:
        """Remove every partition rule and message fault of this host (idempotent)."""
        table = self._lab.prefix
        self._nft(f"table inet {table} {{}}\ndelete table inet {table}\n")
        self._blocked.clear()
        self.clear_netem()

    def netem(
        self,
        delay_ms: float = 0,
        jitter_ms: float = 0,
        loss_pct: float = 0,
        duplicate_pct: float = 0,
        reorder_pct: float = 0,
    ) -> None:
        """Message faults on everything the host sends (its eth0's root qdisc), in
        place of the ones before. Jitter alone reorders too: netem sends each packet at
        its own delayed time. ``reorder_pct`` of the packets skip the delay (netem wants
        a delay for it). Check ``netem_unavailable_reason()`` first."""
        for name, pct in (("loss", loss_pct), ("duplicate", duplicate_pct),
                          ("reorder", reorder_pct)):  # fmt: skip
            if not 0 <= pct <= 100:
                raise ValueError(f"{name}_pct must be within 0..100, not {pct}")
        if delay_ms < 0 or jitter_ms < 0 or (jitter_ms and not delay_ms):
            raise ValueError("delay_ms and jitter_ms must be >= 0, jitter only with a delay")
        if reorder_pct and not delay_ms:
            raise ValueError("reordering needs a delay (the others are held back)")
        options: list[str] = []
        if delay_ms:
            options += ["delay", f"{delay_ms:g}ms"]
            if jitter_ms:
                options.append(f"{jitter_ms:g}ms")
        if loss_pct:
            options += ["loss", f"{loss_pct:g}%"]
        if duplicate_pct:
            options += ["duplicate", f"{duplicate_pct:g}%"]
        if reorder_pct:
            options += ["reorder", f"{reorder_pct:g}%"]
        if not options:
            self.clear_netem()
            return
        if netem_available():
            _sh(self._exec(["tc", "qdisc", "replace", "dev", _HOST_IF, "root", "netem", *options]))
        else:
            self.clear_netem()
            self._emulate(delay_ms, loss_pct, duplicate_pct, reorder_pct)
            self._emulated = True
        self._netem = " ".join(options)

    def _emulate(
        self, delay_ms: float, loss_pct: float, duplicate_pct: float, reorder_pct: float
    ) -> None:
        """The faults without sch_netem, on what the host sends from eth0.

        nftables drops ``loss_pct`` of the packets at random and sends
        ``duplicate_pct`` twice (``dup to`` eth0 again). With a delay, a
        share of the packets (``reorder_pct``, else half) goes to a slow HTB class
        where a 500-byte packet takes about ``delay_ms`` to leave and queues
        behind the others held back: those arrive late, after packets sent later
        (delay and reordering; the delay is queueing, so it varies with the load)."""
        rules = []
        if loss_pct:
            rules.append(f"numgen random mod 10000 < {round(loss_pct * 100)} drop")
        if duplicate_pct:
            rules.append(
                f'numgen random mod 10000 < {round(duplicate_pct * 100)} dup to "{_HOST_IF}"'
            )
        if delay_ms:
            held = round((reorder_pct or 50) * 100)
            if held >= 10000:
                rules.append("meta priority set 1:20")
            else:
                rules.append(
                    f"meta priority set numgen random mod 10000 map "
                    f"{{ 0-{held - 1} : 1:20, {held}-9999 : 1:10 }}"
                )
            # A 500-byte packet takes delay_ms to leave the slow class; no burst,
            # so even a lone packet waits its turn.
            slow_kbit = max(8, round(500 * 8 / delay_ms))
            tc = ["tc", "class", "add", "dev", _HOST_IF, "parent", "1:", "classid"]
            _sh(self._exec(["tc", "qdisc", "replace", "dev", _HOST_IF, "root", "handle", "1:",
                            "htb", "default", "10", "r2q", "100000"]))  # fmt: skip
            _sh(self._exec([*tc, "1:10", "htb", "rate", "10gbit"]))
            _sh(self._exec([*tc, "1:20", "htb", "rate", f"{slow_kbit}kbit",
                            "burst", "0", "cburst", "0"]))  # fmt: skip
        # At eth0's egress, after the stack: a drop there is a loss the sender
        # never hears of (an output-hook drop fails its send with EPERM).
        body = "\n".join(f"    {rule}" for rule in rules)
        table = self._faults_table
        self._nft(
            f"table netdev {table} {{}}\n"
            f"delete table netdev {table}\n"
            f"table netdev {table} {{\n"
            f"  chain egress {{\n"
            f'    type filter hook egress device "{_HOST_IF}" priority filter; policy accept;\n'
            f"{body}\n"
            f"  }}\n"
            f"}}\n"
        )

    @property
    def _faults_table(self) -> str:
        return f"{self._lab.prefix}-faults"

    @property
    def netem_options(self) -> str:
        """The message faults in force ("" for none), as given to netem."""
        return self._netem

    def clear_netem(self) -> None:
        """Back to the default qdisc and no fault rules (idempotent)."""
        if not self._netem:
            return
        if self._emulated and (NETNS_DIR / self.netns).exists():
            table = self._faults_table
            self._nft(f"table netdev {table} {{}}\ndelete table netdev {table}\n")
            subprocess.run(
                self._exec(["tc", "qdisc", "del", "dev", _HOST_IF, "root"]),
                capture_output=True, timeout=30,
            )  # fmt: skip
            self._emulated = False
            self._netem = ""
            return
        result = subprocess.run(
            self._exec(["tc", "qdisc", "del", "dev", _HOST_IF, "root"]),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        # Gone already (the namespace went first, say) is as good as removed.
        if result.returncode != 0 and (NETNS_DIR / self.netns).exists():
            shown = _sh(self._exec(["tc", "qdisc", "show", "dev", _HOST_IF]), check=False)
            if "netem" in shown:
                raise RuntimeError(f"tc qdisc del on {self.name} failed: {result.stderr.strip()}")
        self._netem = ""

    def link_down(self) -> None:
        """Pull the cable: the switch-side veth goes down, so eth0 loses carrier."""
        _sh(["ip", "-n", self._lab.bridge_netns, "link", "set", self._port, "down"])

    def link_up(self) -> None:
        _sh(["ip", "-n", self._lab.bridge_netns, "link", "set", self._port, "up"])

    # -- teardown ------------------------------------------------------------------

    def _kill_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        # Catches whatever escaped the process groups (setsid, double fork).
        _kill_netns_processes(self.netns)
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


class Lab:
    """A bridge namespace plus host namespaces; close() removes all of it."""

    def __init__(self, prefix: str | None = None, subnet: str = "10.213.0.0/24") -> None:
        if prefix is None:
            prefix = f"{PREFIX_ROOT}-{os.getpid()}-{secrets.token_hex(3)}"
        # The prefix doubles as nft table name, which must start with a letter.
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"bad lab prefix {prefix!r}")
        network = ipaddress.ip_network(subnet)
        if not isinstance(network, ipaddress.IPv4Network) or not network.is_private:
            raise ValueError(f"subnet must be a private IPv4 network, not {subnet}")
        self.prefix = prefix
        self.network = network
        self.bridge_netns = f"{prefix}-br"
        self._hosts: dict[str, Host] = {}
        self._ns_ids: list[tuple[int, int]] = []
        self._free = network.hosts()
        self._closed = False
        _open_labs.add(self)
        try:
            self._setup_bridge()
        except BaseException:
            self.close()
            raise

    def _setup_bridge(self) -> None:
        br = self.bridge_netns
        self._add_netns(br)
        # br_netfilter is loaded on this VM with bridge-nf-call-iptables=1 (per netns,
        # default 1): switch it off so bridged frames never meet IP-level hooks. No IPv6
        # here either, so the switch itself sends no link-local/MLD chatter.
        _sh(
            [
                "ip", "netns", "exec", br, "sh", "-c",
                "for f in /proc/sys/net/bridge/bridge-nf-call-*; do "
                '[ -e "$f" ] && echo 0 > "$f"; done; '
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
                "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            ]
        )  # fmt: skip
        _sh(["ip", "-n", br, "link", "add", _BRIDGE, "type", "bridge", "stp_state", "0"])
        _sh(["ip", "-n", br, "link", "set", _BRIDGE, "up"])

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except Exception as err:
            if exc is None:
                raise
            # Don't let a cleanup error mask the test's own failure.
            exc.add_note(f"netlab cleanup also failed: {err}")

    @property
    def hosts(self) -> list[Host]:
        return list(self._hosts.values())

    def namespaces(self) -> list[str]:
        return [self.bridge_netns, *(h.netns for h in self._hosts.values())]

    def add_host(self, name: str) -> Host:
        if self._closed:
            raise RuntimeError("lab is closed")
        if not _HOST_RE.match(name) or name == "br":
            raise ValueError(f"bad host name {name!r}")
        if name in self._hosts:
            raise ValueError(f"host {name!r} exists")
        try:
            address = str(next(self._free))
        except StopIteration:
            raise RuntimeError(f"subnet {self.network} is full") from None
        netns = f"{self.prefix}-{name}"
        # Switch port names are indexes: short (15-byte limit) and unique per bridge.
        port = f"v{len(self._hosts)}"
        host = Host(self, name, netns, address, port)
        # Register before creating anything so close() cleans up a half-built host.
        self._hosts[name] = host
        self._add_netns(netns)
        br = self.bridge_netns
        # Created inside the bridge netns with the peer moved straight into the host:
        # the root namespace never sees either end.
        _sh(["ip", "-n", br, "link", "add", port, "type", "veth",
             "peer", "name", _HOST_IF, "netns", netns])  # fmt: skip
        _sh(["ip", "-n", br, "link", "set", port, "master", _BRIDGE, "up"])
        # IPv6 off on eth0 only (lo keeps ::1): isolate() filters IPv4, and link-local
        # IPv6 would otherwise be a path around the partition.
        _sh(["ip", "netns", "exec", netns, "sh", "-c",
             f"echo 1 > /proc/sys/net/ipv6/conf/{_HOST_IF}/disable_ipv6"])  # fmt: skip
        plen = self.network.prefixlen
        _sh(["ip", "-n", netns, "addr", "add", f"{address}/{plen}", "dev", _HOST_IF])
        _sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        _sh(["ip", "-n", netns, "link", "set", _HOST_IF, "up"])
        return host

    def host(self, name: str) -> Host:
        return self._hosts[name]

    def close(self) -> None:
        """Kill lab processes, clear netem, delete host namespaces (with their nft
        tables), then the bridge namespace (which takes the veths along). Idempotent;
        errors are collected so one failure does not leave the rest behind."""
        self._closed = True
        errors: list[BaseException] = []
        for host in self._hosts.values():
            try:
                host._kill_all()
            except Exception as exc:
                errors.append(exc)
            try:
                # The namespace takes its qdisc along; removed first all the same.
                host.clear_netem()
            except Exception as exc:
                errors.append(exc)
        for netns in [*(h.netns for h in self._hosts.values()), self.bridge_netns]:
            try:
                _delete_netns(netns)
            except Exception as exc:
                errors.append(exc)
        _open_labs.discard(self)
        if errors:
            raise RuntimeError(f"lab {self.prefix} cleanup failed: {errors!r}")

    def leftovers(self) -> list[str]:
        """What of this lab still exists (namespaces, processes); empty after close()."""
        return find_leftovers(self.prefix, self.namespace_ids)

    @property
    def namespace_ids(self) -> list[tuple[int, int]]:
        """(dev, inode) of every namespace the lab created, kept after they are deleted."""
        return list(self._ns_ids)

    def _add_netns(self, netns: str) -> None:
        _sh(["ip", "netns", "add", netns])
        ns_id = _netns_id(netns)
        if ns_id is not None:
            self._ns_ids.append(ns_id)


def find_leftovers(prefix: str, ns_ids: Iterable[tuple[int, int]] = ()) -> list[str]:
    """Namespaces named prefix-*, root nft tables named prefix, processes in ns_ids."""
    found = []
    if NETNS_DIR.is_dir():
        found += [f"netns {n}" for n in os.listdir(NETNS_DIR) if n.startswith(f"{prefix}-")]
    tables = _sh(["nft", "list", "tables"], check=False)
    found += [f"nft {line}" for line in tables.splitlines() if line.split()[-1:] == [prefix]]
    for ns_id in ns_ids:
        found += [f"pid {pid} in netns {ns_id}" for pid in pids_in_netns(ns_id)]
    return found


@atexit.register
def _close_open_labs() -> None:
    # Last resort for code that forgot close(); SIGKILLed runs are left to sweep_stale().
    for lab in list(_open_labs):
        with contextlib.suppress(Exception):
            lab.close()
