"""GPU allocation. Docker schedules no GPUs (``count=1`` gives every container
GPU 0), so the hub keeps the inventory and hands out explicit device ids.

    allocate(inventory=("0", "1"), in_use={"0": 1}, count=1, shareable=False)  # ("1",)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hub.domain.errors import QuotaExceeded


def allocate(
    inventory: Sequence[str], in_use: Mapping[str, int], count: int, *, shareable: bool
) -> tuple[str, ...]:
    """Pick ``count`` GPUs: free ones only, or the least used for a shareable environment."""
    if count <= 0:
        return ()
    if not inventory:
        raise QuotaExceeded(f"needs {count} GPU{'s' if count > 1 else ''}; this hub has no GPUs")
    if shareable:
        ranked = sorted(inventory, key=lambda gpu: (in_use.get(gpu, 0), inventory.index(gpu)))
        if count > len(ranked):
            raise QuotaExceeded(f"needs {count} GPUs; this hub has only {len(ranked)}")
        return tuple(ranked[:count])
    free = [gpu for gpu in inventory if in_use.get(gpu, 0) == 0]
    if count > len(free):
        raise QuotaExceeded(
            f"needs {count} GPU{'s' if count > 1 else ''}; {len(free)} of {len(inventory)} "
            "free on this hub right now"
        )
    return tuple(free[:count])
