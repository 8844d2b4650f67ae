"""Stage 2: compare a listing with the items table; decide what to (re)index and delete."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from rag_service.models import Item, ItemStatus
from rag_service.providers.protocols import ObjectInfo

# Items left in these states by an interrupted sync are redone even when unchanged.
UNFINISHED: frozenset[ItemStatus] = frozenset({"queued", "running", "outdated"})


@dataclass
class SyncPlan:
    new: list[ObjectInfo] = field(default_factory=list)
    changed: list[ObjectInfo] = field(default_factory=list)
    unchanged: list[ObjectInfo] = field(default_factory=list)
    deleted: list[Item] = field(default_factory=list)

    @property
    def to_index(self) -> list[ObjectInfo]:
        return self.new + self.changed


def is_changed(info: ObjectInfo, item: Item) -> bool:
    return (
        info.etag != item.etag
        or info.size != item.size
        or abs(info.last_modified - item.last_modified) > 1e-3
    )


def plan_sync(listing: Mapping[str, ObjectInfo], items: Sequence[Item]) -> SyncPlan:
    plan = SyncPlan()
    by_key = {item.key: item for item in items}
    for key, info in sorted(listing.items()):
        item = by_key.get(key)
        if item is None:
            plan.new.append(info)
        elif is_changed(info, item) or item.status in UNFINISHED:
            plan.changed.append(info)
        else:
            plan.unchanged.append(info)
    plan.deleted = [item for key, item in sorted(by_key.items()) if key not in listing]
    return plan
