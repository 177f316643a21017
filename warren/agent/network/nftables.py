"""The node's nftables data plane for service VIPs and published ports.

`ServiceProxy.sync(desired)` plans one transaction from what it last programmed
(`vip_rules.plan`) and applies it through a `PacketFilter`. If a transaction
fails, the proxy forgets what it knew, so the next sync replaces the whole
table in one atomic transaction instead of patching an unknown state. A new
table (none on the node) is built in steps of BUILD_STEP frontends.

Cost (bench/nft_sync.py, a 2-core machine at load 4-5): one sync is one
transaction, however many services it changes. Applying one endpoint change took
medians of 0.3-0.5 ms at 10 services, 0.4-3.5 ms at 1,000 and 0.7-5 ms at 10,000
(100 changes in a row: 0.5-0.6 ms and 1.1-1.5 ms at 10 and 10,000); the previous
layout, with a chain per service and per backend, took 0.5 / 15 / 250 ms (see
vip_rules for why). Planning it is an identity walk over the frontends (0.6-0.9 ms
at 10,000). Building a table of 10,000 services took 3-6 s as one transaction and
6 s in steps of 1,000 (the previous layout: 23-27 s in steps, 2 minutes at once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from warren.agent.network import nft_syntax, vip_rules
from warren.agent.network.libnft import LibNftables
from warren.agent.network.nft_model import NftModel, TableModel
from warren.agent.network.vip_rules import Command, DataPlane, Transaction

# Frontends per transaction when building a new table (see vip_rules.build_steps):
# 10,000 services in one transaction take about half the time of 10 steps.
BUILD_STEP = 10_000


class PacketFilter(Protocol):
    """Applies nftables transactions atomically, in one network namespace."""

    def apply(self, transaction: Transaction) -> None:
        """Run every command or none; raises a WarrenError with nft's message."""
        ...

    def delete_table(self) -> None:
        """Remove Warren's table; a missing table is no error."""
        ...

    def table_exists(self) -> bool:
        """Whether Warren's table is there (left by an earlier agent, say)."""
        ...


class NftablesPacketFilter:
    """The kernel's nftables through libnftables (netns: a /run/netns path, or here)."""

    def __init__(self, netns: Path | None = None) -> None:
        self._nft = LibNftables(netns)

    def apply(self, transaction: Transaction) -> None:
        # In nft's syntax: libnftables 1.0.6's JSON cannot declare the endpoint maps.
        self._nft.run_script(nft_syntax.render(transaction))

    def delete_table(self) -> None:
        self.apply(vip_rules.delete_table())

    def table_exists(self) -> bool:
        listing = self._nft.run([{"list": {"tables": {"family": vip_rules.FAMILY}}}])
        tables = listing.get("nftables", [])
        return any(item.get("table", {}).get("name") == vip_rules.TABLE for item in tables)

    def list_table(self) -> dict[str, object]:
        """nft's JSON listing of Warren's table ({} when there is none)."""
        listing = self._nft.run([{"list": {"table": {"family": vip_rules.FAMILY,
                                                     "name": vip_rules.TABLE}}}])  # fmt: skip
        return listing

    def close(self) -> None:
        self._nft.close()


class FakePacketFilter:
    """A strict model of the table for unit tests: refuses what the kernel refuses,
    keeps every transaction it applied."""

    def __init__(self) -> None:
        self.model = NftModel()
        self.transactions: list[Transaction] = []
        self.fail_next: Exception | None = None

    def apply(self, transaction: Transaction) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        self.model.apply(transaction)
        self.transactions.append(transaction)

    def delete_table(self) -> None:
        self.apply(vip_rules.delete_table())

    def table_exists(self) -> bool:
        return self.table is not None

    @property
    def table(self) -> TableModel | None:
        return self.model.table(vip_rules.FAMILY, vip_rules.TABLE)


class ServiceProxy:
    """Keeps the packet filter's table in line with the desired data plane."""

    def __init__(self, packet_filter: PacketFilter) -> None:
        self.packet_filter = packet_filter
        self.programmed: DataPlane | None = None

    def sync(self, desired: DataPlane) -> Transaction:
        """Apply the smallest change towards desired; returns the commands run.

        Without a table yet, the table is built in steps of BUILD_STEP frontends;
        over a table of unknown content (an earlier agent's, or after a failure), it
        is replaced in one transaction, so what it serves keeps being served.
        """
        if self.programmed is None and not self.packet_filter.table_exists():
            applied: list[Command] = []
            for step in vip_rules.build_steps(desired, BUILD_STEP):
                applied += self._apply(vip_rules.plan(self.programmed, step), step)
            return tuple(applied)
        return self._apply(vip_rules.plan(self.programmed, desired), desired)

    def _apply(self, transaction: Transaction, state: DataPlane) -> Transaction:
        if transaction:
            try:
                self.packet_filter.apply(transaction)
            except BaseException:
                # Unknown now: the next sync replaces the table atomically.
                self.programmed = None
                raise
        self.programmed = state
        return transaction

    def close(self) -> None:
        """Remove the table (and with it every VIP and published port)."""
        self.programmed = None
        self.packet_filter.delete_table()
