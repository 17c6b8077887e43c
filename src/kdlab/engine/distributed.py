"""Multi-process data-parallel training under ``torchrun`` (one process per device).

Single-process runs never touch ``torch.distributed``: every helper here is a no-op (or returns rank 0 /
world 1) unless ``WORLD_SIZE > 1`` and :func:`setup` has initialised the process group. Design:

* ``setup()`` initialises the default process group from torchrun's environment (``nccl`` on CUDA,
  ``gloo`` on the CPU) once per process; the device becomes ``cuda:LOCAL_RANK`` on CUDA.
* Each rank trains on a contiguous, equal-sized chunk of the same (seed, epoch) order; the remainder
  (``n % world`` samples of the shuffled order) is dropped for that epoch (see ``kdlab.data.loader``).
* Gradients are averaged by PyTorch's ``DistributedDataParallel`` (:func:`wrap`), built per stage over one
  module that holds the students *and* the objectives (connectors, projection heads), so one set of buckets
  covers every trainable parameter and its all-reduce overlaps the backward. The bare students stay what the
  engine evaluates, saves and exports (state-dict keys, feature hooks and checkpoints are those of a single
  process); the hooks sit on the bare modules, which DDP's forward calls.
* ``find_unused_parameters`` (``train.find_unused``; auto: on when a step may leave a trainable parameter
  without a gradient: trainable connectors, extra views, a stage's ``trainable`` subset) and
  ``broadcast_buffers=False``: BatchNorm statistics stay per rank during an epoch (no broadcast per step) and
  rank 0's are broadcast at every epoch end, as before. ``train.sync_batchnorm`` converts BatchNorm to
  SyncBatchNorm instead (CUDA only).
* ``train.parallel: fsdp`` shards every student and objective with FSDP2 (:func:`shard`) instead, for
  students too large to hold with their gradients and optimiser state on one device. Rank 0 keeps one bare,
  unsharded copy of the students: at every epoch end all ranks gather the full state (:func:`full_state`),
  which rank 0 loads into that copy to evaluate and save, and writes as the checkpoint (the same keys as one
  process's). Single-stage recipes only (a new stage would reshard the students).
* Parameters and buffers are broadcast from rank 0 once per stage (after the objectives are built or
  resumed); afterwards the averaged gradients keep the parameters identical on every rank, and only the
  buffers (BatchNorm statistics, which each rank updates on its own shard) are broadcast at every epoch end,
  so the model rank 0 evaluates and saves is the model every rank holds.
* Evaluation, logs, checkpoints, weights and ``summary.json`` are rank 0's job; the others wait at a barrier.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist


def requested() -> bool:
    """True when launched by torchrun (or similar) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: torch.device) -> torch.device:
    """Initialise the process group when ``WORLD_SIZE > 1`` and return this rank's device."""
    if not requested():
        return device
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_teardown)
    return device


def _teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def _flat_op(tensors: list[torch.Tensor], op) -> None:
    """Run ``op`` on one flattened float32 copy of ``tensors`` and copy the result back in place."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
    op(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t).to(t.dtype))
        offset += n


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    if not active():
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out


def wrap(module: torch.nn.Module, device: torch.device, *, find_unused: bool) -> torch.nn.Module:
    """``module`` under DistributedDataParallel (gradient buckets all-reduced during the backward), or the
    module itself in one process or when nothing in it is trainable."""
    if not active() or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False, find_unused_parameters=find_unused)


def shard(modules: list[torch.nn.Module]) -> None:
    """FSDP2: ``fully_shard`` every module that has parameters, in place (parameters become DTensor shards,
    all-gathered for each forward and reduce-scattered after the backward; hooks and names unchanged)."""
    from torch.distributed.fsdp import fully_shard

    for m in modules:
        if any(True for _ in m.parameters()):
            fully_shard(m)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(module: torch.nn.Module, opt: torch.optim.Optimizer | None = None):
    """(model state, optimiser state or None) of a module holding sharded parts, gathered in full on rank 0's
    CPU (the other ranks get empty dicts). Collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model = get_model_state_dict(module, options=_options())
    return model, (get_optimizer_state_dict(module, opt, options=_options()) if opt is not None else None)


def load_full_optimizer_state(module: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """The inverse of :func:`full_state` for the optimiser: every rank keeps its shard of a full state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, opt, state, options=StateDictOptions(full_state_dict=True))


def broadcast_state(module: torch.nn.Module, params: bool = True) -> None:
    """Copy rank 0's buffers (and parameters, unless ``params=False``) into every rank's ``module``."""
    if not active():
        return
    with torch.no_grad():
        tensors = ([p.data for p in module.parameters()] if params else []) + [b for b in module.buffers()]
        floats = [t for t in tensors if t.is_floating_point()]
        others = [t for t in tensors if not t.is_floating_point()]
        _flat_op(floats, lambda flat: dist.broadcast(flat, 0))
        for t in others:  # e.g. BatchNorm's num_batches_tracked (a few scalars)
            dist.broadcast(t, 0)
