"""Saving a mask from a model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

Under FSDP2 every rank holds a slice of each weight and score, as a DTensor. A mask repo needs whole
tensors (the binary mask, the head, the base's fingerprint), so saving gathers them first: that is a
collective, which is why `MaskedModel.save_pretrained` must then run on every rank (writing only
where ``is_main_process``), as transformers' own `save_pretrained` does under FSDP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


def is_sharded(model: nn.Module) -> bool:
    """Whether any parameter is a DTensor (FSDP2's `fully_shard`, or tensor parallelism)."""
    dtensor = _dtensor_type()
    return dtensor is not None and any(isinstance(p, dtensor) for p in model.parameters())


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Inside, every sharded (DTensor) parameter is replaced by a plain Parameter holding its full value.

    Fresh all-gathered copies, not FSDP's own unsharded buffers: reading those through numpy (the
    fingerprint's hashing) would pin storage that FSDP frees by resizing it. The sharded parameters
    are put back on exit. Does nothing for a model without DTensor parameters. Every rank must enter
    it together, since each gather is a collective.
    """
    dtensor = _dtensor_type()
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        for module in model.modules():  # the same order on every rank, so the collectives pair up
            for name, param in list(module._parameters.items()):
                if dtensor is not None and isinstance(param, dtensor):
                    full = param.full_tensor()
                    full = full.wait() if hasattr(full, "wait") else full  # an async collective's result
                    module._parameters[name] = nn.Parameter(full.detach(), requires_grad=param.requires_grad)
                    swapped.append((module, name, param))
        yield
    finally:
        for module, name, param in reversed(swapped):
            module._parameters[name] = param
