"""What a node keeps about itself in its data dir (node.json)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from warren.security.tls import write_private


@dataclass(frozen=True)
class NodeState:
    """Written when a worker joins, or when a manager is demoted: the node's ID,
    its role, and the managers it last knew."""

    node_id: str
    role: str
    managers: list[str]

    @classmethod
    def load(cls, data_dir: Path) -> NodeState | None:
        try:
            raw = json.loads((data_dir / "node.json").read_text())
        except FileNotFoundError:
            return None
        return cls(raw["node_id"], raw["role"], list(raw["managers"]))

    def save(self, data_dir: Path) -> None:
        payload = {"node_id": self.node_id, "role": self.role, "managers": self.managers}
        write_private(data_dir / "node.json", json.dumps(payload).encode())
