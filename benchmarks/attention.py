"""Time per call and peak memory of the multi-source attention Triton kernel beside SDPA over the
concatenated sources (the concatenation and the log-weight mask included), float16 on CUDA, at
video-diffusion sizes: local window tokens, two anchor frames, and a K/V cache of the last two
steps weighted by log(decay ** steps).

    .venv/bin/python benchmarks/attention.py

Needs a CUDA GPU (the kernel is Triton); elsewhere it prints one line and exits 0.
"""

import functools
import math

import torch
import torch.nn.functional as F

from vid3d_kernels.attention import multi_source_attention_reference, triton_multi_source_attention

# (batch, heads, query tokens); a frame is FRAME_TOKENS tokens (a 32x32 latent grid)
CASES = [(2, 8, 4096), (2, 16, 4096), (2, 8, 8192), (2, 16, 8192), (2, 16, 16384)]
FRAME_TOKENS = 1024
DIM = 64
DECAY = 0.9


def make_inputs(batch: int, heads: int, lq: int):
    kv = lambda n: (torch.randn(batch, heads, n, DIM, device="cuda", dtype=torch.float16) for _ in range(2))
    query = torch.randn(batch, heads, lq, DIM, device="cuda", dtype=torch.float16)
    sources = [(*kv(lq), 0.0), (*kv(2 * FRAME_TOKENS), 0.0)]  # local window, anchor frames
    sources += [(*kv(lq), steps * math.log(DECAY)) for steps in (1, 2)]  # cache of the last two steps
    return query, sources


def measure(fn) -> tuple[float, float]:
    """(milliseconds per call, peak MB allocated beyond the inputs), or NaNs when it runs out of memory."""
    from triton.testing import do_bench

    try:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
        return do_bench(fn, warmup=25, rep=100), peak_mb
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return math.nan, math.nan


def main() -> None:
    if not torch.cuda.is_available():
        print("benchmarks/attention.py needs a CUDA GPU (the kernel is Triton); nothing measured here.")
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(
        "B",
        "H",
        "Lq",
        "keys (local+anchors+cache)",
        "Triton ms",
        "Triton MB",
        "cat+SDPA ms",
        "cat+SDPA MB",
        "speed-up",
        "max |diff|",
        "SDPA, no cat/mask ms",
        title=f"multi-source attention, float16, D={DIM}, {torch.cuda.get_device_name()}",
    )
    for batch, heads, lq in CASES:
        query, sources = make_inputs(batch, heads, lq)
        with torch.no_grad():
            kernel = functools.partial(triton_multi_source_attention, query, sources)
            reference = functools.partial(multi_source_attention_reference, query, sources)
            kernel_ms, kernel_mb = measure(kernel)
            reference_ms, reference_mb = measure(reference)
            diff = math.nan if math.isnan(reference_ms) else (kernel() - reference()).abs().max().item()
            # a floor, not the same computation: one pre-concatenated K/V, no log-weights
            keys = torch.cat([k for k, _, _ in sources], 2)
            values = torch.cat([v for _, v, _ in sources], 2)
            plain_ms, _ = measure(functools.partial(F.scaled_dot_product_attention, query, keys, values))
            del keys, values
        lengths = "+".join(str(k.shape[2]) for k, _, _ in sources)
        table.add_row(
            str(batch),
            str(heads),
            str(lq),
            lengths,
            f"{kernel_ms:.2f}",
            f"{kernel_mb:.0f}",
            f"{reference_ms:.2f}",
            f"{reference_mb:.0f}",
            f"{reference_ms / kernel_ms:.2f}x",
            f"{diff:.1e}",
            f"{plain_ms:.2f}",
        )
        del query, sources
        torch.cuda.empty_cache()
    Console(width=160).print(table)
    print("MB: peak memory allocated during one call beyond its inputs. max |diff|: kernel vs cat+SDPA.")


if __name__ == "__main__":
    main()
