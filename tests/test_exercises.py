"""Every exercise: the reference solution passes, a stub is "not attempted", and learner-style mistakes fail
with the message that names them. (quantedu.exercises; no model load: a few seconds in all.)"""
import json
import math

import numpy as np
import pytest
import torch

from quantedu.exercises import FAILED, NOT_ATTEMPTED, PASSED, REGISTRY, grade
from quantedu.exercises.choose_format import example_table
from quantedu.course.guide import ACCURACY, SPEED_TIE, USERS
from quantedu.primitives import QuantConfig, fake_quantize
from test_exercises_activations import WRONG as WRONG_09


def run(ex_id, *fns):
    ex = REGISTRY[ex_id]
    return grade(ex_id, *fns, **(ex.example_context() if ex.example_context else {}))


@pytest.mark.parametrize("ex_id", sorted(REGISTRY))
def test_reference_solution_passes(ex_id):
    res = run(ex_id, *REGISTRY[ex_id].solution)
    assert res.status == PASSED, res.text()
    assert res.checked >= 3 and not res.note


@pytest.mark.parametrize("ex_id", sorted(REGISTRY))
def test_the_stub_is_not_attempted(ex_id):
    ex = REGISTRY[ex_id]
    namespace = {}
    exec(ex.cell().rsplit("\n\n\ncheck(", 1)[0], namespace)  # the cell without its check() call
    res = run(ex_id, *(namespace[n] for n in ex.names))
    assert res.status == NOT_ATTEMPTED and "stub" in res.message


# --- 01 -------------------------------------------------------------------------------------------------


def _wb(overhead=True, ceil=True, head="tied-aware", norms=True):
    def weight_bytes(shape, bits, group_size):
        linear = 0
        for r, c in shape.linear_shapes().values():
            groups = (math.ceil(c / group_size) if ceil else c / group_size) if group_size else 1
            linear += r * (c * bits + (groups * (16 + bits) if overhead else 0)) / 8
        emb = shape.vocab * shape.hidden * 2
        heads = 2 if head == "always" or not shape.tied else 1
        return shape.layers * linear + heads * emb + ((2 * shape.layers + 1) * shape.hidden * 2 if norms else 0)
    return weight_bytes


def _kv(heads="kv_heads", tensors=2, batched=True, per_byte=8):
    def kv_cache_bytes(shape, context, batch, dtype_bits=16):
        n = getattr(shape, heads)
        return tensors * shape.layers * n * shape.head_dim * dtype_bits / per_byte * context * (batch if batched else 1)
    return kv_cache_bytes


# --- 02 -------------------------------------------------------------------------------------------------


def _asym(rounding=torch.round, widen=True, levels=0, clamp=True, zero_round=torch.round, shifted=False):
    def quant(w, bits):
        maxq = 2**bits - 1
        lo, hi = (min(w.min(), 0), max(w.max(), 0)) if widen else (w.min(), w.max())
        span = (hi - lo) if hi > lo else torch.tensor(1.0)
        scale = span / (maxq + levels)
        zero = zero_round(-lo / scale)
        q = rounding((w - lo) / scale) if shifted else rounding(w / scale) + zero
        return (torch.clamp(q, 0, maxq) if clamp else q), scale, zero
    return quant


def dequant(q, scale, zero):
    return scale * (q - zero)


def dequant_wrong(q, scale, zero):
    return scale * q - zero


def _ste(forward=torch.round, backward=lambda g: g):
    class RoundSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return forward(x)

        @staticmethod
        def backward(ctx, grad_output):
            return backward(grad_output)
    return RoundSTE


# --- 03 -------------------------------------------------------------------------------------------------


def _hinv(damp="relative", dead=True, final="chol", inverse="cholesky"):
    def hinv(H, damp_percent):
        H = H.clone()
        if dead:
            d = torch.diag(H) == 0
            H[d, d] = 1
        if damp == "relative":
            H += damp_percent * torch.diag(H).mean() * torch.eye(len(H))
        elif damp == "absolute":
            H += damp_percent * torch.eye(len(H))
        inv = torch.linalg.inv(H) if inverse == "inv" else torch.cholesky_inverse(torch.linalg.cholesky(H))
        if final == "none":
            return inv
        return torch.linalg.cholesky(inv, upper=final == "chol")
    return hinv


def _block(feedback=True, divide=True, row=True, stale=False, keep_err=True):
    def block(W1, Hinv1, quantize):
        original = W1.clone()
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(W1.shape[1]):
            w = W1[:, i]
            q = quantize(i, original if stale else W1)
            err = (w - q) / Hinv1[i, i] if divide else w - q
            if feedback:
                h = Hinv1[i, i:] if row else Hinv1[i:, i]
                W1[:, i:] -= err[:, None] * h[None, :]
            Q1[:, i] = q
            if keep_err:
                Err1[:, i] = err
        return Q1, Err1
    return block


# --- 04 -------------------------------------------------------------------------------------------------


def _search(normalize=True, stat="mean", divide=True, grid="open"):
    def search(weights, x, bits, group_size, n_grid):
        qc = QuantConfig(bits, group_size)
        s_x = x.abs().mean(0) if stat == "mean" else x.abs().amax(0)
        ref = torch.cat([x @ W.T for W in weights], 1)
        alphas = [i / n_grid for i in range(n_grid)] if grid == "open" else torch.linspace(0, 1, n_grid).tolist()
        best = None
        for a in alphas:
            s = s_x.pow(a).clamp(min=1e-4)
            if normalize:
                s = s / (s.max() * s.min()).sqrt()
            out = torch.cat([x @ ((fake_quantize(W * s, qc) / s) if divide else fake_quantize(W * s, qc)).T
                             for W in weights], 1)
            err = ((out - ref) ** 2).mean().item()
            if best is None or err < best[0]:
                best = (err, s, a)
        return best[1], best[2]
    return search


def fold_multiplies_norm(norm, linears, s):
    with torch.no_grad():
        norm.weight.mul_(s)
        for layer in linears:
            layer.weight.mul_(s)


def fold_forgets_bias(norm, linears, s):
    with torch.no_grad():
        norm.weight.div_(s)
        for layer in linears:
            layer.weight.mul_(s)


def fold_without_no_grad(norm, linears, s):
    norm.weight.div_(s)
    for layer in linears:
        layer.weight.mul_(s)


def fold_first_layer_only(norm, linears, s):
    with torch.no_grad():
        norm.weight.div_(s)
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s)
        linears[0].weight.mul_(s)


def fold_rows(norm, linears, s):
    with torch.no_grad():
        norm.weight.div_(s)
        for layer in linears:
            layer.weight.mul_(s[:, None])


# --- 05 -------------------------------------------------------------------------------------------------


def _q8(rounding="roundf", divide=False, half_d=False, signed_max=False, order="d_first"):
    def q8(xb):
        xb = np.asarray(xb, np.float32)
        d = (xb.max(axis=1) if signed_max else np.abs(xb).max(axis=1)) / np.float32(127)
        if half_d:
            d = d.astype(np.float16).astype(np.float32)  # "the stored d is fp16, so use it"
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(d != 0, np.float32(1) / d, 0).astype(np.float32)
            v = xb / d[:, None] if divide else xb * inv[:, None]
        if rounding == "roundf":
            q = np.trunc(v) + np.where(np.abs(v - np.trunc(v)) >= 0.5, np.sign(v), 0)
        elif rounding == "even":
            q = np.round(v)
        else:
            q = np.trunc(v)
        with np.errstate(invalid="ignore"):
            codes = q.astype(np.int8).view(np.uint8)
        dd = d.astype(np.float16).view(np.uint8).reshape(-1, 2)
        return np.concatenate([dd, codes] if order == "d_first" else [codes, dd], axis=1)
    return q8


def _q4k(per_block=True, rounding=np.rint, levels=63, nibbles="ls_low", high_bits=True):
    def q4k(scales, mins):
        def six(v):
            top = np.maximum(v.max(axis=1) if per_block else np.full(len(v), v.max()), 0)
            with np.errstate(divide="ignore"):
                inv = np.where(top > 0, np.float32(levels) / top, 0).astype(np.float32)
            return np.minimum(63, rounding(inv[:, None] * v)).astype(np.uint8), top / np.float32(levels)
        ls, d = six(np.asarray(scales, np.float32))
        lm, dmin = six(np.asarray(mins, np.float32))
        out = np.zeros((len(ls), 12), np.uint8)
        out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6 if high_bits else 0)
        out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6 if high_bits else 0)
        low, high = (ls, lm) if nibbles == "ls_low" else (lm, ls)
        out[:, 8:12] = (low[:, 4:] & 0xF) | ((high[:, 4:] & 0xF) << 4)
        return d, dmin, out
    return q4k


# --- 06 -------------------------------------------------------------------------------------------------


def _sse(first="text", rate="n-1", prefix=5, choices="get", empty="nan"):
    def timings(t_sent, events):
        stamps, first_seen = [], None
        for t, line in events:
            if first_seen is None and line.strip():
                first_seen = t
            if not line.startswith("data:"):
                continue
            data = line[prefix:].strip() if prefix == 5 else line[prefix:]
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            texts = [c.get("text") or "" for c in chunk.get("choices", ())] if choices == "get" else \
                [chunk["choices"][0]["text"]]
            if "".join(texts):
                stamps.append(t)
        ttft = (first_seen if first == "line" else stamps[0]) - t_sent
        if len(stamps) < 2 and empty == "nan":
            return ttft, float("nan")
        n = len(stamps)
        if rate == "n":
            return ttft, n / (stamps[-1] - stamps[0])
        if rate == "with_ttft":
            return ttft, (n - 1) / (stamps[-1] - t_sent)
        return ttft, (n - 1) / (stamps[-1] - stamps[0])
    return timings


# --- 07 -------------------------------------------------------------------------------------------------


def _pick(measured_only=True, tie=True, credible=True, strict_budget=False, users_matter=True):
    def pick(table, hardware, users, memory_budget_mb, accuracy):
        speed = table[f"{hardware}_tok_s_{USERS[users] if users_matter else 1}"]
        keep = table.memory_mb < memory_budget_mb if strict_budget else table.memory_mb <= memory_budget_mb
        if measured_only:
            keep &= speed.notna()
        keep &= (table.ppl_increase_high if credible else table.ppl_increase) <= ACCURACY[accuracy]
        ok = table[keep & (table.engine != "torch")]
        if ok.empty:
            return None
        s = speed[ok.index].fillna(0)
        fast = s >= (SPEED_TIE if tie else 1.0) * s.max()
        return ok[fast].sort_values("memory_mb").variant.iloc[0]
    return pick


# --- 08 -------------------------------------------------------------------------------------------------


def _mx(scale="floor", bias=127, pairs="half", nibble="low", sign="ggml", ties="first"):
    def mxfp4_block(xb):
        xb = np.asarray(xb, np.float32)
        amax = np.abs(xb).max(axis=1)
        safe = np.where(amax > 0, amax, np.float32(1))
        E = np.ceil(np.log2(safe / 6)) if scale == "ceil" else np.floor(np.log2(safe)) - 2
        e = np.where(amax > 0, E + bias, 0).astype(np.int64).astype(np.uint8)
        d = np.ldexp(np.float32(1), np.where(amax > 0, E, -127).astype(np.int64)).astype(np.float32)
        mags = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], np.float32)
        v = xb / d[:, None]
        if ties == "first":
            mag = np.argmin(np.abs(mags * d[:, None, None] - np.abs(xb)[:, :, None]), axis=-1)
        else:  # "away": halves up, via thresholds
            mag = np.searchsorted([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.abs(v), side="right")
        neg = (xb < 0) if sign == "signbit" else (xb < 0) & (mag > 0)
        codes = (mag | neg << 3).astype(np.uint8)
        a, b = (codes[:, :16], codes[:, 16:]) if pairs == "half" else (codes[:, 0::2], codes[:, 1::2])
        qs = a | b << 4 if nibble == "low" else b | a << 4
        return np.concatenate([e[:, None], qs], axis=1)
    return mxfp4_block


def _nv(g_rule="2688", div=6, groups="rows", codes=True):
    def nvfp4_scales(w):
        w = torch.as_tensor(w, dtype=torch.float32)
        amax = w.abs().max()
        g = {"2688": 448 * 6 / amax, "one": torch.tensor(1.0), "inverted": amax / (448 * 6), "448": 448 / amax}[g_rule]
        x = w if groups == "rows" else w.T
        a16 = x.reshape(x.shape[0], -1, 16).abs().amax(dim=-1)
        if groups != "rows":
            a16 = a16.reshape(w.shape[1], w.shape[0] // 16).T
        s = (g * (a16 / div)).clamp(max=448).to(torch.float8_e4m3fn)
        return g, (s.view(torch.uint8) if codes else s.float())
    return nvfp4_scales


def _tp(kv_fraction=False, mlp_whole=False, no_padding=False, embedding_replicated=False, norms_split=False):
    """10.rank_weights with one of the classic slips switched on."""
    def rank_weight_bytes(shape, tp):
        h, d = shape.hidden, shape.head_dim
        kv = shape.kv_heads / tp if kv_fraction else max(1, shape.kv_heads // tp)
        mlp = shape.intermediate if mlp_whole else shape.intermediate // tp
        per_layer = 2 * (shape.heads // tp) * d * h + 2 * kv * d * h + 3 * mlp * h
        vocab = shape.vocab if no_padding else 64 * math.ceil(shape.vocab / 64)
        vocab = vocab if embedding_replicated else vocab / tp
        norms = (2 * shape.layers + 1) * h / (tp if norms_split else 1)
        return 2 * (shape.layers * per_layer + vocab * h * (1 if shape.tied else 2) + norms)
    return rank_weight_bytes



WRONG = [
    ("01.weight_bytes", (_wb(overhead=False),), "left out the per-group fp16 scale"),
    ("01.weight_bytes", (_wb(ceil=False),), "ragged last group"),
    ("01.weight_bytes", (_wb(head="always"),), "tied to the embedding"),
    ("01.weight_bytes", (_wb(norms=False),), "forgot the norm weights"),
    ("01.kv_cache", (_kv(heads="heads"),), "only shape.kv_heads"),
    ("01.kv_cache", (_kv(tensors=1),), "keys AND values"),
    ("01.kv_cache", (_kv(batched=False),), "the batch"),
    ("01.kv_cache", (_kv(per_byte=1),), "bits, not bytes"),
    ("02.asym_quantize", (_asym(rounding=torch.floor), dequant), "rounded with floor"),
    ("02.asym_quantize", (_asym(widen=False), dequant), "the range must include 0"),
    ("02.asym_quantize", (_asym(levels=1), dequant), "divide the range by 7"),
    ("02.asym_quantize", (_asym(clamp=False), dequant), "clamp after adding the zero point"),
    ("02.asym_quantize", (_asym(zero_round=torch.floor), dequant), "zero point is off by one"),
    ("02.asym_quantize", (_asym(shifted=True), dequant), "round((w - min) / scale)"),
    ("02.asym_quantize", (_asym(), dequant_wrong), "scale * (q - zero), not scale * q - zero"),
    ("02.round_ste", (_ste(backward=torch.ones_like),), "you returned ones"),
    ("02.round_ste", (_ste(backward=torch.zeros_like),), "passes the upstream gradient straight through"),
    ("02.round_ste", (_ste(forward=torch.floor),), "you used floor"),
    ("02.round_ste", (_ste(backward=lambda g: None),), "received no gradient"),
    ("03.gptq_hinv", (_hinv(damp="none"),), "forgot damping"),
    ("03.gptq_hinv", (_hinv(damp="absolute"),), "damping is relative"),
    ("03.gptq_hinv", (_hinv(final="none"),), "H^-1 itself"),
    ("03.gptq_hinv", (_hinv(final="lower"),), "lower Cholesky factor"),
    ("03.gptq_hinv", (_hinv(dead=False),), "a dead input"),
    ("03.gptq_hinv", (_hinv(inverse="inv"),), "torch.linalg.inv loses precision"),
    ("03.gptq_block", (_block(feedback=False),), "never update the columns still to quantize"),
    ("03.gptq_block", (_block(divide=False),), "divided by Hinv1[i, i]"),
    ("03.gptq_block", (_block(row=False),), "use row i"),
    ("03.gptq_block", (_block(stale=True),), "quantize the block as you update it"),
    ("03.gptq_block", (_block(keep_err=False),), "Err1[:, i] must hold err"),
    ("04.awq_search", (_search(normalize=False),), "normalize it so that sqrt(max(s) * min(s)) == 1"),
    ("04.awq_search", (_search(stat="max"),), "mean |x| of each input channel"),
    ("04.awq_search", (_search(divide=False),), "forget to divide the quantized W * s by s"),
    ("04.awq_search", (_search(grid="closed"),), "is not on the grid"),
    ("04.awq_fold", (fold_multiplies_norm,), "must be divided by s (you multiplied"),
    ("04.awq_fold", (fold_forgets_bias,), "divide it by s too"),
    ("04.awq_fold", (fold_without_no_grad,), "torch.no_grad()"),
    ("04.awq_fold", (fold_first_layer_only,), "layer 1 was not scaled"),
    ("04.awq_fold", (fold_rows,), "scale the columns"),
    ("05.q8_0", (_q8(rounding="even"),), "np.round rounds halves to even"),
    ("05.q8_0", (_q8(rounding="trunc"),), "truncates toward zero"),
    ("05.q8_0", (_q8(divide=True),), "ggml multiplies by id = 1/d"),
    ("05.q8_0", (_q8(signed_max=True),), "largest magnitude"),
    ("05.q8_0", (_q8(half_d=True),), "rounds with the float32 d"),
    ("05.q8_0", (_q8(order="codes_first"),), "starts with d"),
    ("05.q4k_scales", (_q4k(per_block=False),), "Super-block 1 is wrong: is your super-block scale the max"),
    ("05.q4k_scales", (_q4k(rounding=np.trunc),), "truncated the 6-bit scales"),
    ("05.q4k_scales", (_q4k(levels=64),), "d = max / 63"),
    ("05.q4k_scales", (_q4k(nibbles="lm_low"),), "in the LOW nibble"),
    ("05.q4k_scales", (_q4k(high_bits=False),), "top 2 bits"),
    ("06.sse_timings", (_sse(first="line"),), "the first TOKEN is the first chunk with text"),
    ("06.sse_timings", (_sse(rate="n"),), "n - 1 gaps"),
    ("06.sse_timings", (_sse(rate="with_ttft"),), "leaves out the time to first token"),
    ("06.sse_timings", (_sse(choices="index"),), "can have no choices"),
    ("06.sse_timings", (_sse(prefix=6),), "strip the space after 'data:'"),
    ("06.sse_timings", (_sse(empty="divide"),), "single token has no decode interval"),
    ("07.pick_format", (_pick(measured_only=False),), "the guide recommends only what it measured"),
    ("07.pick_format", (_pick(tie=False),), "within 15% of the fastest: a tie"),
    ("07.pick_format", (_pick(credible=False),), "its 95% interval reaches +12.0%"),
    ("07.pick_format", (_pick(strict_budget=True),), "105 MB <= budget 105 MB"),
    ("07.pick_format", (_pick(users_matter=False),), "with 8 request(s) at once"),
    ("08.mxfp4_block", (_mx(scale="ceil"),), "ceil(log2(amax / 6)) is the no-clipping variant"),
    ("08.mxfp4_block", (_mx(bias=0),), "without the bias"),
    ("08.mxfp4_block", (_mx(pairs="adjacent"),), "not neighbours"),
    ("08.mxfp4_block", (_mx(nibble="high"),), "LOW nibble"),
    ("08.mxfp4_block", (_mx(sign="signbit"),), "never code 8"),
    ("08.mxfp4_block", (_mx(ties="away"),), "halves do not round away from zero"),
    ("08.nvfp4_scales", (_nv(g_rule="one"),), "the per-tensor scale is missing"),
    ("08.nvfp4_scales", (_nv(g_rule="inverted"),), "not amax(w) / (448 * 6)"),
    ("08.nvfp4_scales", (_nv(g_rule="448"),), "the tensor's largest group"),
    ("08.nvfp4_scales", (_nv(div=1),), "6 is E2M1's largest value"),
    ("08.nvfp4_scales", (_nv(groups="columns"),), "16 consecutive weights of a ROW"),
    ("08.nvfp4_scales", (_nv(codes=False),), "Return the E4M3 bit patterns"),
    ("10.rank_weights", (_tp(kv_fraction=True),), "one whole KV head"),
    ("10.rank_weights", (_tp(mlp_whole=True),), "the MLP splits too"),
    ("10.rank_weights", (_tp(no_padding=True),), "pads the vocabulary"),
    ("10.rank_weights", (_tp(embedding_replicated=True),), "vocab-parallel"),
    ("10.rank_weights", (_tp(norms_split=True),), "replicated, not split"),
]
WRONG += WRONG_09  # notebook 09's mistakes are written out in test_exercises_activations.py


@pytest.mark.parametrize("ex_id, fns, message", WRONG, ids=[f"{w[0]}-{w[2][:30]}" for w in WRONG])
def test_a_typical_mistake_fails_with_its_message(ex_id, fns, message):
    res = run(ex_id, *fns)
    assert res.status == FAILED, res.text()
    assert message in res.message, res.message
    assert res.message.startswith("input ")  # it names the input


def test_every_exercise_rejects_at_least_three_mistakes():
    counts = {ex_id: sum(w[0] == ex_id for w in WRONG) for ex_id in REGISTRY}
    assert min(counts.values()) >= 3, counts


def test_the_failure_says_which_element_expected_and_got():
    res = run("02.asym_quantize", _asym(rounding=torch.floor), dequant)
    assert "code at element" in res.message and "expected" in res.message and "got" in res.message
    res = run("05.q8_0", _q8(rounding="even"))
    assert "block 0, byte" in res.message


def test_an_exception_in_learner_code_is_a_failure_that_points_at_the_line():
    def broken(shape, context, batch, dtype_bits=16):
        return shape.kv_head * context  # a typo

    res = run("01.kv_cache", broken)
    assert res.status == FAILED
    assert "AttributeError" in res.message and "shape.kv_head * context" in res.message


def test_notebook_table_adds_cases_for_07():
    table = example_table(**{"GGUF Q5_K_M": {"cpu_tok_s_1": 45.0}})
    ex = REGISTRY["07.pick_format"]
    res = grade("07.pick_format", ex.solution[0], table=table)
    plain = grade("07.pick_format", ex.solution[0], table=None)
    assert res.passed and res.checked == plain.checked + 4
