"""attention.attend: every backend on this machine against the float32 reference, the block
planner against the dense mask, and a property test over random shapes, offsets and masks;
each also with a value head dim unlike the query/key one and with attention sinks."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ctxprobe import attention
import ctxprobe.attention.blockwise as attend_mod
from ctxprobe.attention import attend, attend_reference, available_backends
from ctxprobe.attention.backends import kernels_for
from ctxprobe.attention.masks import Rules, block_is_visible, plan_spans, query_blocks, span_mask, trim_queries
from ctxprobe.attention.reference import visible

TOL = 1e-5  # float32, the bar
CPU = torch.device("cpu")
FAST_BACKENDS = [b for b in available_backends(CPU) if b != "reference"]


def rand(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def assert_same(out, lse, ref_out, ref_lse, tol=TOL):
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), "rows with no visible key must have lse -inf"
    assert (out.float()[empty] == 0).all(), "rows with no visible key must give out 0"
    assert (out.float() - ref_out.float()).abs().max().item() <= tol
    if (~empty).any():
        assert (lse[~empty] - ref_lse[~empty]).abs().max().item() <= tol


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny query blocks so short sequences still cross block and chunk boundaries."""
    monkeypatch.setattr(attend_mod, "BLOCK_Q", 16)
    monkeypatch.setattr(attend_mod, "MIN_WINDOW_BLOCK", 4)


MASKS = {
    "causal": dict(causal=True),
    "full": dict(causal=False),
    "chunked": dict(causal=True, chunk_size=24),  # chunks cross the 16-query blocks
    "window": dict(causal=True, window=11),
    "window_big": dict(causal=True, window=40),
    "window_noncausal": dict(causal=False, window=9),
    "chunk_window": dict(causal=True, chunk_size=20, window=7),
}


def sink_logits(n_heads, seed=7):
    """[Hq] sink logits near the lse of ~70 keys at scale 1/sqrt(D) (~4-5), so they matter."""
    return rand(n_heads, seed=seed) + 4.0


# name -> (value head dim as a function of the query/key one, whether sinks are used)
VARIANTS = {
    "plain": (lambda d: d, False),
    "dv_smaller": (lambda d: d // 2, False),   # DeepSeek-V3's shape: Dqk 192, Dv 128
    "dv_larger": (lambda d: d + 16, False),
    "sinks": (lambda d: d, True),
    "sinks_dv_smaller": (lambda d: d // 2, True),
}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("group,head_dim", [(1, 64), (4, 128), (5, 64)])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_backend_matches_reference(backend, mask, group, head_dim, variant, small_blocks):
    Hkv, v_dim = 2, VARIANTS[variant][0](head_dim)
    q = rand(1, Hkv * group, 37, head_dim, seed=1)
    k, v = rand(1, Hkv, 70, head_dim, seed=2), rand(1, Hkv, 70, v_dim, seed=3)
    sinks = sink_logits(Hkv * group) if VARIANTS[variant][1] else None
    for q_start in (None, 10, 0):  # last positions, mid-sequence, first positions
        kw = dict(MASKS[mask], q_start=q_start, k_start=3, sinks=sinks)
        out, lse = attend(q, k, v, backend=backend, **kw)
        assert out.shape == (*q.shape[:3], v_dim) and out.dtype == q.dtype
        assert lse.shape == q.shape[:3] and lse.dtype == torch.float32
        assert_same(out, lse, *attend_reference(q, k, v, **kw))


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_fully_masked_rows_and_blocks(backend, small_blocks):
    # Queries before every key: nothing is visible, every row is empty.
    q, k, v = rand(2, 4, 9, 64), rand(2, 2, 30, 64, seed=1), rand(2, 2, 30, 64, seed=2)
    out, lse = attend(q, k, v, q_start=0, k_start=100, backend=backend)
    assert torch.isneginf(lse).all() and (out == 0).all()
    # A window of 1 under a chunk rule: rows at chunk starts see only themselves, earlier queries nothing.
    out, lse = attend(q, k, v, q_start=95, k_start=100, window=3, chunk_size=8, backend=backend)
    assert_same(out, lse, *attend_reference(q, k, v, q_start=95, k_start=100, window=3, chunk_size=8))
    assert torch.isneginf(lse[:, :, :5]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_cpu_kernel(dtype, small_blocks):
    q, k, v = (rand(1, 8, 50, 64, seed=s, dtype=dtype) for s in range(3))
    k, v = k[:, :2], v[:, :2]
    out, lse = attend(q, k, v, backend="torch", chunk_size=24)
    ref_out, ref_lse = attend_reference(q.float(), k.float(), v.float(), chunk_size=24)
    assert out.dtype == dtype
    assert (out.float() - ref_out).abs().max().item() <= 2e-2
    assert (lse - ref_lse).abs().max().item() <= 2e-2


def test_auto_picks_the_fused_kernel_on_cpu():
    from ctxprobe.attention.backends import ReferenceKernels, TorchCPUKernels

    assert isinstance(kernels_for("auto", CPU, torch.float32), TorchCPUKernels)
    assert isinstance(kernels_for("auto", CPU, torch.int32), ReferenceKernels)
    q, k, v = rand(1, 4, 20, 64), rand(1, 2, 30, 64, seed=1), rand(1, 2, 30, 64, seed=2)
    assert_same(*attend(q, k, v, window=5), *attend_reference(q, k, v, window=5))


def test_default_scale_and_custom_scale():
    q, k, v = rand(1, 2, 5, 64), rand(1, 2, 5, 64, seed=1), rand(1, 2, 5, 64, seed=2)
    assert_same(*attend(q, k, v, scale=0.3, backend="torch"), *attend_reference(q, k, v, scale=0.3))


def test_bad_inputs_name_the_problem():
    q, k = rand(1, 3, 4, 8), rand(1, 2, 4, 8)
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        attend(q, k, k)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attend(k, k, k, backend="nope")
    with pytest.raises(ValueError, match="window must be a positive"):
        attend(k, k, k, window=0)
    with pytest.raises(ValueError, match="CUDA"):
        kernels_for("flash_attn", CPU, torch.float32)


def test_masked_blocks_are_skipped(monkeypatch):
    """Sliding window over 2048 keys: the kernels see O(T * W) key positions, not O(T^2)."""
    seen = []
    real = attend_mod.kernels_for

    class Counting:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, kind):
            fn = getattr(self.inner, kind)

            def run(q, k, *a):
                seen.append(q.shape[2] * k.shape[2])
                return fn(q, k, *a)
            return run

    monkeypatch.setattr(attend_mod, "kernels_for", lambda *a: Counting(real(*a)))
    monkeypatch.setattr(attend_mod, "BLOCK_Q", 128)
    T, W = 2048, 64
    q, k, v = rand(1, 1, T, 64), rand(1, 1, T, 64, seed=1), rand(1, 1, T, 64, seed=2)
    out, lse = attend(q, k, v, window=W, backend="torch")
    assert_same(out, lse, *attend_reference(q, k, v, window=W))
    assert sum(seen) <= T * (3 * W)  # dense would be T * T = 32x more


# ------------------------------------------------------------------ the block planner

def dense_check(q0, q1, k0, k1, rules):
    """Spans must cover exactly the visible keys, with the right kind for each."""
    vis = visible(torch.arange(q0, q1), torch.arange(k0, k1), rules.causal, rules.chunk_size, rules.window)
    covered = torch.zeros(k1 - k0, dtype=torch.bool)
    for s in plan_spans(q0, q1, k0, k1, rules):
        assert k0 <= s.start < s.end <= k1
        assert not covered[s.start - k0 : s.end - k0].any(), "spans overlap"
        covered[s.start - k0 : s.end - k0] = True
        block = vis[:, s.start - k0 : s.end - k0]
        if s.kind == "full":
            assert block.all()
        elif s.kind == "diag":
            assert s.start == q0
            assert torch.equal(block, torch.ones_like(block).tril())
        else:
            assert torch.equal(block, span_mask(q0, q1, s.start, s.end, rules, "cpu"))
    assert not vis[:, ~covered].any(), "a visible key is outside every span"
    assert block_is_visible(q0, q1, k0, k1, rules) or not vis.any()


@pytest.mark.parametrize("causal,chunk_size,window", list(itertools.product(
    [True, False], [None, 5, 16], [None, 1, 6, 30])))
def test_plan_spans_cover_exactly_the_visible_keys(causal, chunk_size, window):
    rules = Rules(causal, chunk_size, window)
    for (qa, qb), (k0, k1) in itertools.product([(0, 12), (20, 45), (7, 8)], [(0, 50), (10, 33), (40, 41)]):
        for q0, q1 in query_blocks(qa, qb, rules, 9):
            dense_check(q0, q1, k0, k1, rules)
            t0, t1 = trim_queries(q0, q1, k0, k1, rules)
            if t0 < t1:
                dense_check(t0, t1, k0, k1, rules)
                vis = visible(torch.arange(q0, q1), torch.arange(k0, k1), causal, chunk_size, window)
                assert not vis[: t0 - q0].any() and not vis[t1 - q0 :].any(), "trimmed a query that sees a key"
                spans = plan_spans(t0, t1, k0, k1, rules)
                if causal and (window is None or window >= 9):
                    # Blocks no longer than the window: masks only on a window's lower edge.
                    assert all(s.end - s.start < t1 - t0 for s in spans if s.kind == "masked")
                if causal and window is None:
                    assert all(s.kind != "masked" for s in spans)


# ------------------------------------------------------------------ property test

@settings(max_examples=30, deadline=None)
@given(
    Tq=st.integers(1, 40), Tk=st.integers(1, 60), group=st.sampled_from([1, 2, 4, 5]),
    q_off=st.integers(-10, 70), k_start=st.integers(0, 20), causal=st.booleans(),
    chunk_size=st.one_of(st.none(), st.integers(1, 30)), window=st.one_of(st.none(), st.integers(1, 40)),
    block_q=st.integers(1, 20), seed=st.integers(0, 2**16), v_dim=st.sampled_from([16, 8, 24]),
    with_sinks=st.booleans(),
)
def test_property_random_shapes_offsets_masks(Tq, Tk, group, q_off, k_start, causal, chunk_size, window,
                                              block_q, seed, v_dim, with_sinks):
    q = rand(1, 2 * group, Tq, 16, seed=seed)
    k, v = rand(1, 2, Tk, 16, seed=seed + 1), rand(1, 2, Tk, v_dim, seed=seed + 2)
    sinks = rand(2 * group, seed=seed + 3) * 2 if with_sinks else None
    kw = dict(causal=causal, chunk_size=chunk_size, window=window, q_start=k_start + q_off, k_start=k_start,
              sinks=sinks)
    ref = attend_reference(q, k, v, **kw)
    old = attend_mod.BLOCK_Q, attend_mod.MIN_WINDOW_BLOCK
    attend_mod.BLOCK_Q, attend_mod.MIN_WINDOW_BLOCK = block_q, 1
    try:
        assert_same(*attend(q, k, v, backend="torch", **kw), *ref)
    finally:
        attend_mod.BLOCK_Q, attend_mod.MIN_WINDOW_BLOCK = old
    rules = Rules(causal, chunk_size, window)
    for q0, q1 in query_blocks(k_start + q_off, k_start + q_off + Tq, rules, block_q):
        dense_check(q0, q1, k_start, k_start + Tk, rules)


def test_package_exports():
    for name in ("attend", "merge", "apply_sinks", "KVStore", "chunked_attention", "BlockStream"):
        assert hasattr(attention, name)


# ------------------------------------------------------------------ CUDA / flash-attn glue, on CPU
# The CUDA kernels cannot run here; fakes with their contracts (no GQA for the aten ops,
# bottom-right causal, [B, T, H, D] layout and +inf lse for flash-attn) drive the same glue.

def _one_head_dim(q, v):
    if q.shape[-1] != v.shape[-1]:  # as FA2 and the flash ops: one head dim for q, k and v
        raise RuntimeError("Q/K/V should have the same head size")


def _fake_aten(q, k, v, scale, causal):
    assert q.shape[1] == k.shape[1], "the aten CUDA ops take equal head counts"
    _one_head_dim(q, v)
    return attend_reference(q, k, v, scale=scale, causal=causal)  # bottom-right when causal


def _fake_aten_any_dv(q, k, v, scale, causal):
    """Like cuDNN or the memory-efficient op: Dv may differ from Dk."""
    assert q.shape[1] == k.shape[1], "the aten CUDA ops take equal head counts"
    return attend_reference(q, k, v, scale=scale, causal=causal)


def _fake_fa2(q, k, v, dropout_p, softmax_scale, causal, return_attn_probs):
    _one_head_dim(q, v)
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    out, lse = attend_reference(t(q), t(k), t(v), scale=softmax_scale, causal=causal)
    return t(out), torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse), None


def _fa_ref(q, k, v, softmax_scale, causal):
    """[B, T, H, D] in and out, bottom-right causal, lse +inf for empty rows (flash-attn's contract)."""
    _one_head_dim(q, v)
    t = lambda x: x.transpose(1, 2)  # noqa: E731
    out, lse = attend_reference(t(q), t(k), t(v), scale=softmax_scale, causal=causal)
    return t(out), torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)


def _fake_fa3(q, k, v, softmax_scale=None, causal=False, qv=None, window_size=(-1, -1),
              return_attn_probs=False):
    """FA3 (hopper flash_attn_interface): out alone unless return_attn_probs."""
    out, lse = _fa_ref(q, k, v, softmax_scale, causal)
    return (out, lse) if return_attn_probs else out


def _fake_fa3_early(q, k, v, softmax_scale=None, causal=False):
    """The first FA3 betas: always (out, lse), no return_attn_probs keyword."""
    return _fa_ref(q, k, v, softmax_scale, causal)


def _fake_fa4(q, k, v, softmax_scale=None, causal=False, window_size=(None, None), return_lse=False):
    """FA4 (flash_attn.cute): always a pair, lse None unless return_lse."""
    out, lse = _fa_ref(q, k, v, softmax_scale, causal)
    return out, (lse if return_lse else None)


FAKE_FLASH_ATTN = {"fa2": _fake_fa2, "fa3": _fake_fa3, "fa3_early": _fake_fa3_early, "fa4": _fake_fa4}


@pytest.mark.parametrize("flavour", ["torch_cuda", "torch_cuda_any_dv", "fa2", "fa3", "fa3_early", "fa4"])
@pytest.mark.parametrize("mask", ["causal", "chunked", "window", "full"])
@pytest.mark.parametrize("v_dim,sinks", [(64, False), (40, True), (80, False)])
def test_cuda_glue_with_fake_kernels(flavour, mask, v_dim, sinks, monkeypatch, small_blocks):
    """Each kernel's glue, with Dv = Dk and Dv != Dk: fakes that need one head dim (raising as
    the real ones do) get padded inputs; one that takes any Dv is called as it is."""
    from ctxprobe.attention import backends

    if flavour.startswith("torch_cuda"):
        monkeypatch.setitem(backends.CUDA_OPS, "fake", _fake_aten_any_dv if flavour.endswith("any_dv") else _fake_aten)
        kern = backends.TorchCUDAKernels("fake")
    else:
        fake = FAKE_FLASH_ATTN[flavour]
        monkeypatch.setattr(backends, "flash_attn_module", lambda: (flavour.split("_")[0], fake))
        kern = backends.FlashAttnKernels()
    monkeypatch.setattr(attend_mod, "kernels_for", lambda *a: kern)
    q, k, v = rand(1, 10, 37, 64, seed=1), rand(1, 2, 70, 64, seed=2), rand(1, 2, 70, v_dim, seed=3)
    for q_start in (None, 10, 60):  # 60: queries run past the last key (non-square diagonal)
        kw = dict(MASKS[mask], q_start=q_start, k_start=3, sinks=sink_logits(10) if sinks else None)
        assert_same(*attend(q, k, v, backend="torch", **kw), *attend_reference(q, k, v, **kw))


def test_cuda_self_check_is_per_value_head_dim(monkeypatch):
    """A kernel that needs one head dim is picked for Dv = Dk and passed over for Dv != Dk (then
    the inputs are padded for it); one that takes any Dv is picked for both, and run as it is."""
    from ctxprobe.attention import backends

    monkeypatch.setattr(backends, "CUDA_OPS", {"same_dims": _fake_aten})
    backends.pick_cuda_op.cache_clear()
    try:
        assert backends.pick_cuda_op("cpu", torch.float32, 64) == "same_dims"
        assert backends.pick_cuda_op("cpu", torch.float32, 64, 48) is None
        calls = []
        monkeypatch.setitem(backends.CUDA_OPS, "same_dims",
                            lambda q, k, v, *a: calls.append((q.shape[-1], v.shape[-1])) or _fake_aten(q, k, v, *a))
        q, k, v = rand(1, 2, 9, 64), rand(1, 2, 9, 64, seed=1), rand(1, 2, 9, 48, seed=2)
        assert_same(*backends.TorchCUDAKernels().full(q, k, v, 0.125),
                    *attend_reference(q, k, v, scale=0.125, causal=False))
        assert calls == [(64, 64)]  # padded, not the reference math
        monkeypatch.setattr(backends, "CUDA_OPS", {"any_dv": _fake_aten_any_dv})
        backends.pick_cuda_op.cache_clear()
        assert backends.pick_cuda_op("cpu", torch.float32, 64, 48) == "any_dv"
    finally:
        backends.pick_cuda_op.cache_clear()


def test_in_place_merge_matches_merge():
    from ctxprobe.attention.merge import merge, merge_

    out_a, out_b = rand(2, 3, 40, 8, seed=1), rand(2, 3, 40, 8, seed=2).bfloat16()
    lse_a, lse_b = rand(2, 3, 40, seed=3) * 5, rand(2, 3, 40, seed=4) * 5
    lse_a[0, 0, :10] = float("-inf")  # rows 5..9 empty on both sides
    out_a[0, 0, :10] = 0
    lse_b[0, 0, 5:15] = float("-inf")
    out_b[0, 0, 5:15] = 0
    ref_out, ref_lse = merge(out_a, lse_a, out_b, lse_b)
    out, lse = merge_(out_a.clone(), lse_a.clone(), out_b, lse_b)
    assert_same(out, lse, ref_out, ref_lse)
    assert torch.isneginf(lse[0, 0, 5:10]).all()


def test_cuda_self_check_rejects_a_kernel_wrong_off_the_causal_diagonal(monkeypatch):
    """pick_cuda_op must check the unmasked rectangular call too (most spans are that), not only
    the square causal one: here a kernel that always applies causal masking must be passed over."""
    from ctxprobe.attention import backends

    def always_causal(q, k, v, scale, causal):
        return _fake_aten(q, k, v, scale, True)

    monkeypatch.setattr(backends, "CUDA_OPS", {"always_causal": always_causal, "good": _fake_aten})
    backends.pick_cuda_op.cache_clear()
    try:
        assert backends.pick_cuda_op("cpu", torch.float32, 64) == "good"
    finally:
        backends.pick_cuda_op.cache_clear()


def test_bench_time_limit_is_not_swallowed_by_per_backend_error_handling(monkeypatch):
    """bench/attention.py reports a failing backend and goes on; the time-limit alarm raised
    inside such a try must still stop the check (device time is budgeted)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "attention.py"
    spec = importlib.util.spec_from_file_location("bench_attention_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def out_of_time(*args, **kwargs):
        raise bench.OutOfTime("time limit reached")

    monkeypatch.setattr(bench, "attend", out_of_time)
    with pytest.raises(bench.OutOfTime):
        bench.check_a(CPU, torch.float32, 48)
    with pytest.raises(bench.OutOfTime):
        bench.resident(CPU, torch.float32, 32, ["torch"], repeat=1)


# ------------------------------------------------------------------ sinks and Dv != Dk

def test_reference_sinks_are_a_softmax_column_that_is_dropped():
    """The oracle itself, against the definition written out by hand (gpt-oss): softmax over
    [scores, sink] per row, the sink's column dropped; and a row without keys gets out 0, lse = sink."""
    q, k, v = rand(1, 4, 6, 8), rand(1, 2, 9, 8, seed=1), rand(1, 2, 9, 5, seed=2)
    sinks = torch.tensor([0.5, -1.0, 2.0, 3.0])
    out, lse = attend_reference(q, k, v, sinks=sinks, causal=False, scale=0.4)
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q, kk) * 0.4
    logits = torch.cat([scores, sinks.view(1, 4, 1, 1).expand(1, 4, 6, 1)], dim=-1)
    want = torch.einsum("bhqk,bhkd->bhqd", torch.softmax(logits, dim=-1)[..., :9], vv)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1), atol=1e-6, rtol=0)
    out, lse = attend_reference(q, k, v, sinks=sinks, q_start=0, k_start=50)  # every key in the future
    assert (out == 0).all() and torch.equal(lse, sinks.view(1, 4, 1).expand(1, 4, 6))


def test_sinks_apply_once_to_merged_parts():
    """Partial results over disjoint keys merge as without sinks; apply_sinks once to the merge
    equals one call with sinks over every key. Applied to each part, the sink would count twice."""
    from ctxprobe.attention import apply_sinks, merge

    q, k, v = rand(1, 4, 12, 16), rand(1, 2, 40, 16, seed=1), rand(1, 2, 40, 8, seed=2)
    sinks = sink_logits(4) - 2
    want = attend_reference(q, k, v, sinks=sinks, causal=False)
    parts = [attend(q, k[:, :, a:b], v[:, :, a:b], causal=False) for a, b in ((0, 15), (15, 40))]
    assert_same(*apply_sinks(*merge(*parts[0], *parts[1]), sinks), *want)
    each = [attend(q, k[:, :, a:b], v[:, :, a:b], causal=False, sinks=sinks) for a, b in ((0, 15), (15, 40))]
    twice = merge(*each[0], *each[1])
    assert (twice[1] - want[1]).abs().max().item() > 0.1  # what passing sinks to every part would do
    # sinks of -inf change nothing; an empty part stays empty until the sink joins
    plain = attend(q, k, v, causal=False)
    assert_same(*attend(q, k, v, causal=False, sinks=torch.full((4,), float("-inf"))), *plain)
    out, lse = apply_sinks(torch.zeros(1, 4, 3, 8), torch.full((1, 4, 3), float("-inf")), sinks)
    assert (out == 0).all() and torch.equal(lse, sinks.view(1, 4, 1).expand(1, 4, 3))


def test_sinks_change_the_result_and_keep_low_precision():
    q, k, v = (rand(1, 4, 30, 64, seed=s, dtype=torch.bfloat16) for s in range(3))
    sinks = sink_logits(4)
    out, lse = attend(q, k[:, :2], v[:, :2, :, :32], backend="torch", sinks=sinks)
    ref_out, ref_lse = attend_reference(q.float(), k[:, :2].float(), v[:, :2, :, :32].float(), sinks=sinks)
    plain_out, _ = attend_reference(q.float(), k[:, :2].float(), v[:, :2, :, :32].float())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 4, 30, 32)
    assert (out.float() - ref_out).abs().max().item() <= 2e-2 and (lse - ref_lse).abs().max().item() <= 2e-2
    assert (plain_out - ref_out).abs().max().item() > 0.05  # the sinks really moved the output


def test_value_as_leading_columns_of_the_key_is_not_copied(monkeypatch):
    """MLA keeps V as the first Dv columns of K (the latent): a kernel that needs one head dim is
    handed K itself as the padded V, and the result is still exact."""
    from ctxprobe.attention import backends

    k = rand(1, 1, 50, 24, seed=1)
    v = k[..., :16]
    q = rand(1, 4, 20, 24)
    seen = []
    real = backends.TorchCPUKernels.op
    monkeypatch.setattr(backends.TorchCPUKernels, "op",
                        staticmethod(lambda q, k, v, *a: seen.append(v.data_ptr() == k.data_ptr()) or real(q, k, v, *a)))
    assert backends.is_leading_columns(v, k) and not backends.is_leading_columns(v.clone(), k)
    assert_same(*attend(q, k, v, backend="torch"), *attend_reference(q, k, v))
    assert seen and all(seen)


def test_bad_sinks_and_value_shapes_name_the_problem():
    q, k = rand(1, 4, 5, 8), rand(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r"sinks must be a float tensor \[Hq\] = \[4\]"):
        attend(q, k, k, sinks=torch.zeros(2))
    with pytest.raises(ValueError, match="sinks must be a float tensor"):
        attend(q, k, k, sinks=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="must agree on B, Hkv and Tk"):
        attend(q, k, rand(1, 2, 6, 4))
    with pytest.raises(ValueError, match="k's head dim must be q's"):
        attend(q, rand(1, 2, 5, 6), rand(1, 2, 5, 8))
