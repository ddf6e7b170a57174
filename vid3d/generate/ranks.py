"""Window parallelism: the windows of every sampling step spread over torch.distributed ranks.

`torchrun --nproc-per-node N -m vid3d generate P ...` starts N copies of the command. Rank 0 runs
the command as one process would (the project's lock, its writes, progress, the report) and owns the
sampling: the latents, every random draw, the scheduler, the fusion and the feedback loop. At each
step it broadcasts the model's input; every rank predicts the windows it owns (window k belongs to
rank k mod N, so each window's K/V cache stays where it was made), the anchor pass is run on every
rank (each rank's windows attend to anchors recorded in its own model), and rank 0 gathers the
windows' outputs and fuses them in the global window order. Every denoiser call has the shapes it
has in one process, so the result is the one process's, bit for bit. The other ranks write nothing.

The communication is torch.distributed's (NCCL on CUDA, gloo on the CPU); nothing here is a
collective of its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

LEADER = 0


@dataclass
class Ranks:
    """This process's place among the ranks; one rank (no torch.distributed) outside torchrun."""

    rank: int = 0
    world: int = 1
    sent_job: bool = field(default=False, repr=False)

    @property
    def leads(self) -> bool:
        return self.rank == LEADER

    @property
    def spread(self) -> bool:
        return self.world > 1

    def owns(self, window: int) -> bool:
        return window % self.world == self.rank

    def share_job(self, job: Any = None) -> Any:
        """Rank 0 sends what the other ranks need to take part in a sampling (None: nothing to
        do); the others receive it."""
        import torch.distributed as dist

        box = [job if self.leads else None]
        if self.leads:
            self.sent_job = True
        dist.broadcast_object_list(box, src=LEADER)
        return box[0]

    def finish(self) -> None:
        """Every rank waits here after its last collective: a rank that left while another's transfer
        to it was still in flight aborted in gloo's teardown."""
        import torch.distributed as dist

        if self.spread:
            dist.barrier()

    def share_input(self, scaled, shape: tuple[int, ...], device):
        """The step's model input, from rank 0 to every rank (the others pass None)."""
        import torch
        import torch.distributed as dist

        if not self.spread:
            return scaled
        header = [scaled.dtype if self.leads else None]
        dist.broadcast_object_list(header, src=LEADER)
        if not self.leads:
            scaled = torch.empty(shape, dtype=header[0], device=device)
        dist.broadcast(scaled, src=LEADER)
        return scaled

    def gather_windows(self, outputs: list, count: int) -> list | None:
        """Every window's output, in window order, on rank 0 (None on the others). `outputs` are this
        rank's windows' in order; all windows have one shape. all_gather rather than a reduction:
        rank 0 fuses in the window order one process uses, whatever the backend."""
        import torch
        import torch.distributed as dist

        if not self.spread:
            return outputs
        slots = -(-count // self.world)
        mine = torch.stack(outputs + [torch.zeros_like(outputs[0])] * (slots - len(outputs)))
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        if not self.leads:
            return None
        return [everyone[k % self.world][k // self.world] for k in range(count)]


_current = Ranks()


def current() -> Ranks:
    """The ranks of this command (one rank outside torchrun)."""
    return _current


def launched() -> bool:
    """Whether torchrun (or srun with torchrun's rendezvous) started several copies of this command."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def joined(device: str) -> Iterator[Ranks]:
    """Join the process group torchrun set up, for the length of the command. On CUDA (`device`, a
    --device value) each rank takes its node's GPU LOCAL_RANK, over NCCL; ranks that must share a
    GPU (fewer GPUs than ranks on the node, which NCCL refuses) and CPU ranks use gloo. On leaving,
    rank 0 releases ranks still waiting for a job; a rank that stopped with an error takes the
    others down (their collectives fail)."""
    global _current
    if not launched():
        yield _current
        return
    import torch
    import torch.distributed as dist

    from vid3d.device import resolve_device

    backend = "gloo"
    if resolve_device(device).type == "cuda":
        gpus, local = torch.cuda.device_count(), int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local % gpus)
        backend = "nccl" if gpus >= int(os.environ.get("LOCAL_WORLD_SIZE", "1")) else "gloo"
    dist.init_process_group(backend)
    _current = Ranks(dist.get_rank(), dist.get_world_size())
    try:
        yield _current
    finally:
        if _current.leads and not _current.sent_job:
            with contextlib.suppress(Exception):  # the others wait for a job that will not come
                _current.share_job(None)
                _current.finish()
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        _current = Ranks()


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank stopped (its own output says why)."""
    import torch.distributed as dist

    return isinstance(error, dist.DistBackendError) or (
        isinstance(error, RuntimeError) and any(s in str(error) for s in ("Connection closed", "Connection reset"))
    )
