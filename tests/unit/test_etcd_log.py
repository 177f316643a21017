"""The etcd log's apply step (entries, claims, fencing) and its state images, without etcd."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from factories import make_node, make_service
from hypothesis import given, settings
from hypothesis import strategies as st

from warren.core.errors import InvalidArgument
from warren.manager.etcd import state_image
from warren.manager.etcd.log_entry import (
    FENCED,
    LEDGER_SIZE,
    Ledger,
    apply_entry,
    claim_entry,
    command_entry,
)
from warren.manager.etcd.state_image import Fence
from warren.manager.store import MUST_NOT_EXIST, Kind, Store, put, txn


def _create(obj: Any) -> dict[str, Any]:
    return txn([put(obj, MUST_NOT_EXIST)], at=time.time())


def _apply_all(store: Store, entries: list[bytes]) -> tuple[list[Any], Fence]:
    fence, results = Fence(), []
    for entry in entries:
        result, fence = apply_entry(store, fence, entry)
        results.append(result)
    return results, fence


def test_an_untagged_command_applies_whatever_the_fence() -> None:
    store = Store()
    result, fence = apply_entry(store, Fence(7, "m1:2379"), command_entry(_create(make_node("n1"))))
    assert "error" not in result["results"][0]
    assert fence == Fence(7, "m1:2379")
    assert store.get(Kind.NODE, "n1") is not None


def test_a_claim_of_a_higher_term_moves_the_fence_and_a_lower_one_is_refused() -> None:
    store = Store()
    results, fence = _apply_all(
        store,
        [
            claim_entry(3, "m1:2379"),
            claim_entry(5, "m2:2379"),
            claim_entry(4, "m3:2379"),
            claim_entry(5, "m3:2379"),  # the same term by another: refused
            claim_entry(5, "m2:2379"),  # the same claim again (its answer was lost): granted
        ],
    )
    assert [r["claimed"] for r in results] == [True, True, False, False, True]
    assert fence == Fence(5, "m2:2379")


def test_a_deposed_leaders_write_is_refused_at_apply_and_changes_nothing() -> None:
    store = Store()
    entries = [
        claim_entry(3, "m1:2379"),
        command_entry(_create(make_node("n1")), term=3),  # m1 leads: applies
        claim_entry(4, "m2:2379"),
        command_entry(_create(make_service("web")), term=3),  # m1, deposed
        command_entry(_create(make_node("n2")), term=4),  # m2 leads: applies
    ]
    results, _ = _apply_all(store, entries)
    assert results[3][FENCED] is True
    assert "term 4" in results[3]["message"] and "m2:2379" in results[3]["message"]
    assert store.list(Kind.SERVICE) == []
    assert {n.id for n in store.list(Kind.NODE)} == {"n1", "n2"}


def test_an_unreadable_entry_is_an_error_not_a_crash() -> None:
    with pytest.raises(InvalidArgument):
        apply_entry(Store(), Fence(), b"{not json")


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("claim"), st.integers(1, 6), st.sampled_from(["a:1", "b:1"])),
            st.tuples(st.just("write"), st.integers(0, 6), st.integers(0, 20)),
        ),
        max_size=40,
    )
)
def test_replicas_applying_the_same_entries_agree(steps: list[tuple[str, int, Any]]) -> None:
    """Determinism: two stores fed the same log end with the same state and
    fence, and a tagged write applies exactly when its term is the fence's."""
    entries = []
    for i, (what, term, arg) in enumerate(steps):
        if what == "claim":
            entries.append(claim_entry(term, arg))
        else:
            entries.append(command_entry(_create(make_node(f"n{i}-{arg}")), term=term))
    first, second = Store(), Store()
    results_a, fence_a = _apply_all(first, entries)
    results_b, fence_b = _apply_all(second, entries)
    assert results_a == results_b and fence_a == fence_b
    assert first.state_hash() == second.state_hash()
    fence = Fence()
    for (what, term, arg), result in zip(steps, results_a, strict=True):
        if what == "claim":
            granted = term > fence.term or (term == fence.term and arg == fence.holder)
            fence = Fence(term, arg) if granted else fence
        else:
            assert (FENCED in result) == (term != 0 and term != fence.term)


def test_a_state_image_round_trips_the_store_and_the_fence() -> None:
    store = Store()
    _apply_all(
        store,
        [
            command_entry(_create(make_node("n1"))),
            command_entry(_create(make_service("web"))),
            claim_entry(9, "m1:2379"),
        ],
    )
    image = state_image.capture(42, Fence(9, "m1:2379"), store.export_state())
    data = state_image.encode(image)
    assert state_image.image_revision(data) == 42
    loaded = state_image.decode(data)
    restored = Store()
    restored.import_state(loaded.store_state)
    assert loaded.log_revision == 42 and loaded.fence == Fence(9, "m1:2379")
    assert restored.state_hash() == store.state_hash()
    assert restored.get(Kind.SERVICE, store.list(Kind.SERVICE)[0].id).spec.name == "web"


def test_a_captured_image_does_not_move_with_later_writes() -> None:
    store = Store()
    _apply_all(store, [command_entry(_create(make_node("n1")))])
    image = state_image.capture(1, Fence(), store.export_state())
    _apply_all(store, [command_entry(_create(make_node("n2")))])
    loaded = state_image.decode(state_image.encode(image))
    assert set(loaded.store_state["tables"][Kind.NODE]) == {"n1"}


def test_an_image_of_an_unknown_format_or_kind_is_refused() -> None:
    image = state_image.encode(state_image.capture(1, Fence(), Store().export_state()))
    head, _, body = image.partition(b"\n")
    import gzip

    document = json.loads(gzip.decompress(body))
    for change, words in (({"format": 99}, "format 99"), ({"tables": {"gadget": []}}, "gadget")):
        altered = head + b"\n" + gzip.compress(json.dumps({**document, **change}).encode())
        with pytest.raises(Exception, match=words):
            state_image.decode(altered)


def test_a_retried_copy_of_a_proposal_applies_once_with_the_first_result() -> None:
    store, ledger = Store(), Ledger()
    entry = command_entry(_create(make_node("n1")), proposal_id="p-1")
    first, fence = apply_entry(store, Fence(), entry, ledger)
    revision = store.revision
    # The put is sent again (its answer was lost): the copy commits later.
    second, _ = apply_entry(store, fence, entry, ledger)
    assert second == first and "error" not in first["results"][0]
    assert store.revision == revision  # not applied again (it would fail: n1 exists)
    # Without an ID, or with another, it is a write of its own.
    again, _ = apply_entry(store, fence, command_entry(_create(make_node("n1"))), ledger)
    assert again["error"] == "already_exists"


def test_the_ledger_is_bounded_and_travels_in_the_state_image() -> None:
    store, ledger = Store(), Ledger()
    for i in range(LEDGER_SIZE + 3):
        apply_entry(store, Fence(), command_entry({"op": "barrier"}, proposal_id=f"p{i}"), ledger)
    ids = [proposal_id for proposal_id, _ in ledger.entries()]
    assert len(ids) == LEDGER_SIZE and ids[0] == "p3" and ids[-1] == f"p{LEDGER_SIZE + 2}"
    image = state_image.capture(9, Fence(), store.export_state(), tuple(ledger.entries()))
    loaded = Ledger(state_image.decode(state_image.encode(image)).ledger)
    assert loaded.entries() == ledger.entries()
    # A manager that loaded the image skips the same copies as the others.
    copy = command_entry({"op": "barrier"}, proposal_id=f"p{LEDGER_SIZE + 2}")
    assert apply_entry(Store(), Fence(), copy, loaded)[0] == ledger.result(f"p{LEDGER_SIZE + 2}")[1]
