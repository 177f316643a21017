"""The applied state as one value in etcd: what a manager loads instead of the
log entries etcd's compaction removed.

An image is taken at one log revision: the store's tables, and the leadership
fence (the highest claimed term and who claimed it), which the apply step
reads as much as the store. Gzipped JSON of the models' dict form.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

from warren.core.codec import from_dict, to_dict
from warren.core.errors import FailedPrecondition, InvalidArgument
from warren.manager.kinds import Kind, spec_of

IMAGE_FORMAT = 1


@dataclass(frozen=True)
class Fence:
    """The latest leadership claim applied: writes tagged with another term are refused."""

    term: int = 0
    holder: str = ""


@dataclass(frozen=True)
class StateImage:
    log_revision: int  # the etcd revision of the last entry it covers
    fence: Fence
    store_state: dict[str, Any]  # as Store.export_state / import_state
    # Recent proposal IDs and their results (log_entry.Ledger), oldest first.
    ledger: tuple[tuple[str, Any], ...] = ()


def capture(
    log_revision: int,
    fence: Fence,
    store_state: dict[str, Any],
    ledger: tuple[tuple[str, Any], ...] = (),
) -> StateImage:
    """Copy the tables (not the objects, which are immutable): the store goes on
    applying while the image is encoded on another thread."""
    tables = {kind: dict(objects) for kind, objects in store_state["tables"].items()}
    state = {"revision": store_state["revision"], "tables": tables}
    return StateImage(log_revision, fence, state, ledger)


def encode(image: StateImage) -> bytes:
    tables = {
        str(kind): [to_dict(obj) for _, obj in sorted(objects.items())]
        for kind, objects in image.store_state["tables"].items()
        if objects
    }
    document = {
        "format": IMAGE_FORMAT,
        "log_revision": image.log_revision,
        "fence": {"term": image.fence.term, "holder": image.fence.holder},
        "store_revision": image.store_state["revision"],
        "tables": tables,
        "ledger": [[proposal_id, result] for proposal_id, result in image.ledger],
    }
    body = gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=3)
    # The revision first, in clear: whoever replaces an image reads only that.
    return b"%d\n" % image.log_revision + body


def image_revision(data: bytes) -> int:
    """The log revision an encoded image covers."""
    head, _, _ = data.partition(b"\n")
    try:
        return int(head)
    except ValueError:
        raise InvalidArgument("unreadable state image in etcd: no revision") from None


def decode(data: bytes) -> StateImage:
    _, _, body = data.partition(b"\n")
    try:
        document = json.loads(gzip.decompress(body))
    except (OSError, EOFError, ValueError) as exc:
        raise InvalidArgument(f"unreadable state image in etcd: {exc}") from None
    if document.get("format") != IMAGE_FORMAT:
        raise FailedPrecondition(
            f"the state image in etcd has format {document.get('format')!r}; "
            f"this manager reads format {IMAGE_FORMAT}: upgrade it"
        )
    tables: dict[Kind, dict[str, Any]] = {}
    for name, objects in document["tables"].items():
        try:
            kind = Kind(name)
        except ValueError:
            raise FailedPrecondition(
                f"the state image in etcd holds {name!r} objects, which this manager "
                "does not know: upgrade it"
            ) from None
        model = spec_of(kind).model
        tables[kind] = {
            raw["id"]: from_dict(model, raw, f"{name}[{i}]") for i, raw in enumerate(objects)
        }
    fence = Fence(int(document["fence"]["term"]), str(document["fence"]["holder"]))
    store_state = {"revision": int(document["store_revision"]), "tables": tables}
    ledger = tuple((str(i), result) for i, result in document.get("ledger", []))
    return StateImage(int(document["log_revision"]), fence, store_state, ledger)
