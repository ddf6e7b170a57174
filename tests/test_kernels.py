"""Multi-source attention: the PyTorch reference against SDPA and a float64 softmax, and the Triton
kernel against the reference under Triton's CPU interpreter.

TRITON_INTERPRET must be set before triton is first imported, and this test session may already
have imported it (torch and diffusers import it lazily), so the kernel runs in one child process:
this file run as a script computes every kernel case and prints their errors as JSON.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vid3d_kernels.attention import multi_source_attention, multi_source_attention_reference


def rand(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def three_sources(batch, heads, dim, dtype=torch.float32):
    """Lengths 7, 33 and 50 (not multiples of the 16-key test block), float and per-key weights,
    the last one batch-1 (expanded over the batch)."""
    k3, v3 = rand(1, heads, 50, dim, dtype=dtype), rand(1, heads, 50, dim, dtype=dtype)
    return [
        (rand(batch, heads, 7, dim, dtype=dtype), rand(batch, heads, 7, dim, dtype=dtype), 0.5),
        (rand(batch, heads, 33, dim, dtype=dtype), rand(batch, heads, 33, dim, dtype=dtype), rand(33, dtype=dtype)),
        (k3.expand(batch, -1, -1, -1), v3.expand(batch, -1, -1, -1), -0.7),
    ]


def naive(query, sources, scale=None):
    """softmax(Q K^T * scale + w) V in float64 over the concatenated sources."""
    batch, heads = query.shape[:2]
    d = lambda t: t.double().expand(batch, heads, -1, -1)
    keys = torch.cat([d(k) for k, _, _ in sources], 2)
    values = torch.cat([d(v) for _, v, _ in sources], 2)
    weights = torch.cat(
        [
            torch.full((k.shape[2],), float(w), dtype=torch.float64) if isinstance(w, float) else w.double()
            for k, _, w in sources
        ]
    )
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    logits = query.double() @ keys.transpose(-1, -2) * scale + weights
    return torch.softmax(logits, -1) @ values


# --- the reference -------------------------------------------------------------------------------


def test_reference_with_one_unweighted_source_is_plain_sdpa():
    torch.manual_seed(0)
    q, k, v = rand(2, 3, 20, 16), rand(2, 3, 24, 16), rand(2, 3, 24, 16)
    assert torch.equal(multi_source_attention_reference(q, [(k, v, 0.0)]), F.scaled_dot_product_attention(q, k, v))
    assert torch.equal(
        multi_source_attention_reference(q, [(k, v, 0.0)], scale=0.3),
        F.scaled_dot_product_attention(q, k, v, scale=0.3),
    )


@pytest.mark.parametrize("scale", [None, 0.2])
def test_reference_matches_float64_softmax(scale):
    torch.manual_seed(1)
    q = rand(3, 2, 37, 32)
    sources = three_sources(3, 2, 32)
    out = multi_source_attention_reference(q, sources, scale)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), naive(q, sources, scale), atol=1e-5, rtol=1e-5)


def test_very_negative_weight_removes_a_source():
    torch.manual_seed(2)
    q = rand(2, 2, 12, 16)
    local, anchors, cache = three_sources(2, 2, 16)
    off = (cache[0], cache[1], -1e4)
    torch.testing.assert_close(
        multi_source_attention_reference(q, [local, anchors, off]),
        multi_source_attention_reference(q, [local, anchors]),
        atol=1e-6,
        rtol=0,
    )


def test_gradients_flow_through_the_reference():
    torch.manual_seed(3)
    f64 = {"dtype": torch.float64, "requires_grad": True}
    q, k, v = torch.randn(1, 2, 3, 4, **f64), torch.randn(2, 2, 5, 4, **f64), torch.randn(1, 2, 4, 4, **f64)
    w = torch.randn(5, **f64)
    kb, vb = torch.randn(1, 2, 4, 4, **f64), torch.randn(1, 2, 5, 4, **f64)

    def attend(q, k, v, w, kb, vb):  # batch 2 query against a batch-1 source, per-key and float weights
        return multi_source_attention(q.expand(2, -1, -1, -1), [(k, vb.expand(2, -1, -1, -1), w), (kb, v, -0.3)])

    assert torch.autograd.gradcheck(attend, (q, k, v, w, kb, vb))


def test_dispatch_takes_the_reference_on_cpu():
    torch.manual_seed(4)
    q = rand(2, 2, 10, 16)
    sources = three_sources(2, 2, 16)
    assert torch.equal(multi_source_attention(q, sources), multi_source_attention_reference(q, sources))


def test_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch\n"
        "from vid3d_kernels.attention import multi_source_attention\n"
        "q = torch.randn(1, 1, 4, 16)\n"
        "print(multi_source_attention(q, [(q, q, 0.0)]).shape)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "[1, 1, 4, 16]" in result.stdout, result.stderr


# --- the Triton kernel, in the interpreter -----------------------------------------------------------


def kernel_cases() -> dict:
    """{case: (max |kernel - reference|, tolerance)}; run under TRITON_INTERPRET=1."""
    from vid3d_kernels.attention import triton_multi_source_attention

    def run(q, sources, **kw):
        return triton_multi_source_attention(q, sources, block_m=16, block_n=16, **kw)

    def error(out, expected):
        assert out.shape == expected.shape and out.dtype == expected.dtype
        return (out.float() - expected.float()).abs().max().item()

    torch.manual_seed(0)
    cases = {}
    q, k, v = rand(2, 2, 20, 16), rand(2, 2, 24, 16), rand(2, 2, 24, 16)
    cases["one source"] = error(run(q, [(k, v, 0.0)]), F.scaled_dot_product_attention(q, k, v)), 1e-5
    for dim in (16, 32):
        q = rand(3, 2, 37, dim)  # 37 queries: a ragged last tile
        sources = three_sources(3, 2, dim)
        cases[f"three sources D={dim}"] = error(run(q, sources), multi_source_attention_reference(q, sources)), 1e-5
        cases[f"three sources D={dim}, scale 0.3"] = (
            error(run(q, sources, scale=0.3), multi_source_attention_reference(q, sources, 0.3)),
            1e-5,
        )
    q = rand(2, 2, 37, 24)  # D=24 is padded to a 32-wide tile
    sources = three_sources(2, 2, 24)
    cases["D=24 padded"] = error(run(q, sources), multi_source_attention_reference(q, sources)), 1e-5
    q = rand(3, 19, 2, 16).transpose(1, 2)  # [B, Lq, H, D] storage, as attention layers often hold it
    sources = three_sources(3, 2, 16)
    sources[0] = (sources[0][0], sources[0][1], torch.zeros(7))
    sources[1] = (rand(1, 2, 33, 16), rand(1, 2, 33, 16), sources[1][2])  # batch 1, not expanded
    cases["strided query, batch-1 source"] = error(run(q, sources), multi_source_attention_reference(q, sources)), 1e-5
    six = sources + three_sources(3, 2, 16)  # two launches merged by log-sum-exp
    cases["six sources"] = error(run(q, six), multi_source_attention_reference(q, six)), 1e-5
    local, anchors, cache = sources
    off = (cache[0], cache[1], -1e4)
    cases["-1e4 weight removes a source"] = (
        error(run(q, [local, anchors, off]), multi_source_attention_reference(q, [local, anchors])),
        1e-5,
    )
    # the public entry point with its own block sizes; bfloat16 is left out because the interpreter's
    # tl.dot multiplies bfloat16 bit patterns (triton-lang/triton#11584)
    half = [(k.half(), v.half(), w) for k, v, w in three_sources(3, 2, 32)]
    qh = rand(3, 2, 37, 32).half()
    cases["float16, default blocks"] = (
        error(
            multi_source_attention(qh, half, use_triton=True),
            multi_source_attention_reference(qh.float(), [(k.float(), v.float(), w) for k, v, w in half]).half(),
        ),
        2e-3,
    )
    return cases


@pytest.fixture(scope="module")
def kernel_errors():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(errors) == sorted(CASES)
    return errors


CASES = [
    "one source",
    "three sources D=16",
    "three sources D=16, scale 0.3",
    "three sources D=32",
    "three sources D=32, scale 0.3",
    "D=24 padded",
    "strided query, batch-1 source",
    "six sources",
    "-1e4 weight removes a source",
    "float16, default blocks",
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_matches_reference(kernel_errors, case):
    err, tol = kernel_errors[case]
    assert err <= tol, f"{case}: max error {err:.3g} > {tol:g}"


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps(kernel_cases()))
