"""GPTQ: hand-solved cases, an independent OBS solver, llm-compressor's quantize_weight, the pipeline."""
import copy
import math

import pytest
import torch

from quantedu.gptq import GPTQConfig, HessianAccumulator, gptq_quantize_model, gptq_quantize_weight
from quantedu.primitives import QuantConfig, choose_qparams, fake_quantize

LLMC_SPEC = "llmcompressor==0.14.0.1"


@pytest.fixture(scope="module")
def llmc():
    """llm-compressor's GPTQ kernel. CI installs it: a missing install is a failure, not a skip."""
    try:
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
        from llmcompressor.modifiers.gptq.helpers import accumulate_hessian
    except ImportError as exc:  # pragma: no cover - CI has it
        pytest.fail(f"llm-compressor is needed for the reference tests: pip install '{LLMC_SPEC}' ({exc})")
    return QuantizationArgs, quantize_weight, accumulate_hessian


def random_problem(rows, cols, seed, tokens=256, dead=()):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    # Correlated inputs with uneven scales, like real activations.
    X = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    X = X * torch.rand(cols, generator=g) * 3
    X[:, list(dead)] = 0
    return W, 2 * X.t() @ X / tokens


# --- Hessian ------------------------------------------------------------------------------------


def test_hessian_accumulates_the_average_of_2xxT_over_samples():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(b, 7, 5, generator=g) for b in (1, 3, 2)]  # (samples, tokens, features)
    acc = HessianAccumulator(5)
    for x in xs:
        acc.add(x)
    X = torch.cat([x.reshape(-1, 5) for x in xs])
    assert acc.n == 6
    torch.testing.assert_close(acc.H, 2 * X.t() @ X / 6, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="features"):
        acc.add(torch.randn(1, 4, 6))


def test_hessian_matches_llm_compressor_accumulation(llmc):
    _, _, accumulate_hessian = llmc
    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(16, 4)
    ours, H, n = HessianAccumulator(16), torch.zeros(16, 16), torch.zeros(())
    for _ in range(3):
        x = torch.randn(2, 10, 16, generator=g)
        ours.add(x)
        H, n = accumulate_hessian(x, layer, H, n)
    torch.testing.assert_close(ours.H, H / n, rtol=1e-5, atol=1e-5)


def test_forward_hook_sees_the_layer_input():
    layer = torch.nn.Linear(6, 3)
    acc = HessianAccumulator(6)
    handle = layer.register_forward_hook(acc.hook())
    x = torch.randn(2, 4, 6)
    layer(x)
    handle.remove()
    torch.testing.assert_close(acc.H, 2 * x.reshape(-1, 6).t() @ x.reshape(-1, 6) / 2)


# --- hand-solved and independent solutions -------------------------------------------------------


def test_hand_solved_three_columns():
    """Row [1.4, 1.4, 3.0], 2-bit asym per channel: grid {0, 1, 2, 3} (scale 1, zero 0).

    H couples columns 0 and 1 (H01/H11 = 1/2) and leaves column 2 alone. Column 0 rounds to 1
    (error +0.4); OBS moves column 1 by +0.4 * 1/2 = +0.2 to 1.6, which rounds to 2, where RTN gives 1.
    Output error e H e^T: GPTQ e = [0.4, -0.6, 0] -> 0.56; RTN e = [0.4, 0.4, 0] -> 0.96.
    The reported loss is half of it: 0.24/2 (column 0, [H^-1]_00 = 2/3) + 0.32/2 (column 1, 1/H11).
    """
    W = torch.tensor([[1.4, 1.4, 3.0]])
    H = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    res = gptq_quantize_weight(W, H, GPTQConfig(bits=2, group_size=-1, sym=False, damp_percent=0.0))
    assert res.codes.tolist() == [[1, 2, 3]]
    torch.testing.assert_close(res.weight, torch.tensor([[1.0, 2.0, 3.0]]))
    assert res.scales.item() == pytest.approx(1.0) and res.zeros.item() == 0
    assert res.loss == pytest.approx(0.28, abs=1e-5)
    rtn = fake_quantize(W, QuantConfig(bits=2, symmetric=False, granularity="channel"))
    err = lambda Q: ((W - Q) @ H @ (W - Q).t()).item()  # noqa: E731
    assert err(res.weight) == pytest.approx(0.56, abs=1e-5) and err(rtn) == pytest.approx(0.96, abs=1e-5)


def naive_obs(W, H, qc, group):
    """Greedy sequential OBS written from the definition: after fixing each column, set every free
    column to the exact minimizer of (V - W) H (V - W)^T by a linear solve (no Cholesky trick, no blocks)."""
    rows, cols = W.shape
    V, Q = W.clone().double(), torch.zeros_like(W, dtype=torch.float64)
    H = H.double()
    for j in range(cols):
        if j % group == 0:
            s, z = choose_qparams(V[:, j : j + group].float(), QuantConfig(qc.bits, symmetric=qc.symmetric, granularity="channel"))
            s, z = s[:, 0].double(), z[:, 0].double()
        q = torch.clamp(torch.round(V[:, j] / s) + z, 0, qc.maxq)
        Q[:, j] = s * (q - z)
        S, F = list(range(j + 1)), list(range(j + 1, cols))
        if F:
            E_S = Q[:, S] - W.double()[:, S]
            V[:, F] = W.double()[:, F] - E_S @ H[S][:, F] @ torch.linalg.inv(H[F][:, F])
        V[:, S] = Q[:, S]
    return Q.float()


@pytest.mark.parametrize("bits,group,sym", [(4, 4, True), (3, 8, False), (2, 16, True)])
def test_equals_explicit_sequential_obs(bits, group, sym):
    W, H = random_problem(6, 16, seed=bits)
    cfg = GPTQConfig(bits=bits, group_size=group, sym=sym, damp_percent=0.0, block_size=8)
    res = gptq_quantize_weight(W, H, cfg)
    ref = naive_obs(W, H, cfg.quant_config(), group)
    # float32 Cholesky vs float64 solves: values agree to ~1e-4; a different code would be a whole step off.
    torch.testing.assert_close(res.weight, ref, rtol=0, atol=1e-3)
    assert res.scales.min() > 0.05


def test_gptq_beats_rtn_on_the_layer_objective():
    W, H = random_problem(64, 128, seed=3)
    for cfg in (GPTQConfig(bits=4, group_size=32), GPTQConfig(bits=3, group_size=-1, sym=False, desc_act=True)):
        res = gptq_quantize_weight(W, H, cfg)
        obj = lambda Q: torch.trace((W - Q) @ H @ (W - Q).t()).item()  # noqa: E731
        assert obj(res.weight) < 0.8 * obj(fake_quantize(W, cfg.quant_config()))


# --- the stored parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        GPTQConfig(bits=4, group_size=128),  # 576 = 4 x 128 + a ragged group of 64
        GPTQConfig(bits=3, group_size=128, sym=False, desc_act=True),  # permuted g_idx
        GPTQConfig(bits=2, group_size=64, desc_act=True, static_groups=True),
        GPTQConfig(bits=8, group_size=-1, sym=False),
    ],
    ids=lambda c: c.label(),
)
def test_codes_scales_zeros_g_idx_reproduce_the_weight(cfg):
    W, H = random_problem(16, 576, seed=4)
    res = gptq_quantize_weight(W, H, cfg)
    res.check()
    n_groups = 1 if cfg.group_size == -1 else math.ceil(576 / cfg.group_size)
    assert res.scales.shape == res.zeros.shape == (16, n_groups)
    assert res.codes.dtype == torch.uint8 and int(res.codes.max()) <= 2**cfg.bits - 1
    counts = torch.bincount(res.g_idx.long(), minlength=n_groups)
    if cfg.group_size != -1:
        assert counts.tolist() == [min(cfg.group_size, 576 - k * cfg.group_size) for k in range(n_groups)]
    natural = torch.arange(576) // (576 if cfg.group_size == -1 else cfg.group_size)
    dynamic_actorder = cfg.desc_act and not cfg.static_groups and cfg.group_size != -1
    assert torch.equal(res.g_idx.long(), natural) != dynamic_actorder
    if cfg.desc_act:  # quantization order = decreasing diag(H)
        assert torch.equal(res.perm, torch.argsort(torch.diag(H), descending=True))
        if dynamic_actorder:  # groups are consecutive runs of the *permuted* order
            assert torch.equal(res.g_idx.long()[res.perm], natural)


def test_dead_columns_get_zero_weight_and_no_nan():
    W, H = random_problem(8, 32, seed=5, dead=(3, 17))
    res = gptq_quantize_weight(W, H, GPTQConfig(bits=4, group_size=16))
    assert torch.isfinite(res.weight).all()
    assert res.weight[:, [3, 17]].abs().max() == 0


def test_damping_is_needed_for_a_singular_hessian_and_changes_the_result():
    W, H = random_problem(8, 32, seed=6, tokens=8)  # rank 8 < 32 columns
    with pytest.raises(ValueError, match="not positive definite.*Raise damp_percent"):
        gptq_quantize_weight(W, H, GPTQConfig(damp_percent=0.0, group_size=16))
    a = gptq_quantize_weight(W, H, GPTQConfig(damp_percent=0.01, group_size=16)).weight
    b = gptq_quantize_weight(W, H, GPTQConfig(damp_percent=0.5, group_size=16)).weight
    assert not torch.equal(a, b)


def test_block_size_does_not_change_the_result():
    W, H = random_problem(16, 96, seed=7)
    a = gptq_quantize_weight(W, H, GPTQConfig(group_size=16, block_size=96))
    b = gptq_quantize_weight(W, H, GPTQConfig(group_size=16, block_size=32))
    assert (a.codes != b.codes).sum() <= 2  # lazy updates reorder float sums only
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0.2)


def test_bad_config_says_what_to_do():
    with pytest.raises(ValueError, match="bits"):
        GPTQConfig(bits=5)
    with pytest.raises(ValueError, match="group_size"):
        GPTQConfig(group_size=0)
    with pytest.raises(ValueError, match="damp_percent"):
        GPTQConfig(damp_percent=1.5)
    with pytest.raises(ValueError, match="need W"):
        gptq_quantize_weight(torch.zeros(4, 8), torch.eye(4))


# --- llm-compressor ------------------------------------------------------------------------------

REFERENCE_CASES = [
    GPTQConfig(bits=4, group_size=128, static_groups=True),  # 576: ragged last group
    GPTQConfig(bits=4, group_size=64, sym=False, static_groups=True),
    GPTQConfig(bits=4, group_size=128, desc_act=True, static_groups=True),
    GPTQConfig(bits=3, group_size=32, sym=False, desc_act=True, static_groups=True),
    GPTQConfig(bits=2, group_size=64, desc_act=True, static_groups=True),
    GPTQConfig(bits=8, group_size=128, sym=False, static_groups=True),
    GPTQConfig(bits=4, group_size=-1, desc_act=True, static_groups=True),
    GPTQConfig(bits=4, group_size=-1, sym=False),  # per-channel: static and dynamic grids coincide
]


def llmc_quantize(llmc, W, H, res, cfg):
    """llm-compressor's quantize_weight on the same W, H and grid; returns its codes in our convention."""
    QuantizationArgs, quantize_weight, _ = llmc
    args = QuantizationArgs(
        num_bits=cfg.bits, symmetric=cfg.sym, strategy="channel" if cfg.group_size == -1 else "group",
        group_size=None if cfg.group_size == -1 else cfg.group_size, actorder="static" if cfg.desc_act else None,
    )
    # compressed-tensors' signed codes: zero point = ours - 2**(bits-1), and none at all when symmetric.
    zp = torch.zeros_like(res.scales) if cfg.sym else res.zeros - 2 ** (cfg.bits - 1)
    from quantedu.runtime import torch_threads

    with torch_threads(1):  # the same arithmetic as ours (GPTQ amplifies any float difference)
        Q, _, fallback = quantize_weight(
            W[None].clone(), H[None].clone(), res.scales[None], zp[None].to(torch.int8), None, args,
            blocksize=cfg.block_size, percdamp=cfg.damp_percent,
        )
    assert not fallback.any()
    g = res.g_idx.long()
    codes = torch.round(Q[0] / res.scales[:, g]) + res.zeros[:, g]
    return Q[0], codes


@pytest.mark.parametrize("cfg", REFERENCE_CASES, ids=lambda c: c.label())
def test_equals_llm_compressor_code_for_code(llmc, cfg):
    W, H = random_problem(96, 576, seed=cfg.bits)
    res = gptq_quantize_weight(W, H, cfg)
    if cfg.static_groups:  # the grid llm-compressor's min-max observer computes up front
        s, z = choose_qparams(W, cfg.quant_config())
        assert torch.equal(res.scales, s) and torch.equal(res.zeros, z)
    Q, codes = llmc_quantize(llmc, W, H, res, cfg)
    mismatches = int((codes != res.codes.float()).sum())
    # Same float32 operations in the same order: every code agrees. A tie broken differently would show
    # up as a code off by one; allow none beyond 1 in 10^4 and bound the size of any difference.
    assert mismatches <= W.numel() // 10_000, f"{mismatches} of {W.numel()} codes differ"
    assert (codes - res.codes.float()).abs().max() <= 1
    if mismatches == 0:
        assert torch.equal(Q, res.weight)


def test_dead_columns_match_llm_compressor(llmc):
    cfg = GPTQConfig(bits=4, group_size=32, static_groups=True)
    W, H = random_problem(32, 128, seed=9, dead=(0, 5, 77))
    res = gptq_quantize_weight(W, H, cfg)
    Q, codes = llmc_quantize(llmc, W, H, res, cfg)
    assert torch.equal(codes, res.codes.float()) and torch.equal(Q, res.weight)


# --- whole model -------------------------------------------------------------------------------------


def _calibration(n=4, seq=32, seed=0):
    return torch.randint(0, 256, (n, seq), generator=torch.Generator().manual_seed(seed))


def test_pipeline_quantizes_every_linear_of_every_block(tiny_llama):
    model = copy.deepcopy(tiny_llama)
    cfg = GPTQConfig(bits=4, group_size=32)
    results = gptq_quantize_model(model, _calibration(), cfg, progress=False)
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    assert set(results) == names and len(names) == 14
    for name, res in results.items():
        res.check()
        assert torch.equal(model.get_submodule(name).weight, res.weight)
    assert torch.equal(model.lm_head.weight, tiny_llama.lm_head.weight)  # not a decoder-block layer


def test_pipeline_beats_rtn_on_held_out_text(tiny_llama):
    cfg = GPTQConfig(bits=3, group_size=32)
    ids = _calibration(2, 32, seed=1)
    with torch.no_grad():
        ref = tiny_llama(ids).logits
    gptq = copy.deepcopy(tiny_llama)
    gptq_quantize_model(gptq, _calibration(8, 32), cfg, progress=False)
    rtn = copy.deepcopy(tiny_llama)
    for n, m in rtn.named_modules():
        if isinstance(m, torch.nn.Linear) and n.startswith("model.layers."):
            m.weight.data = fake_quantize(m.weight.data, cfg.quant_config())
    with torch.no_grad():
        err_gptq = (gptq(ids).logits - ref).pow(2).mean()
        err_rtn = (rtn(ids).logits - ref).pow(2).mean()
    assert err_gptq < err_rtn


def test_inputs_from_fp_and_quantized_differ_after_the_first_block(tiny_llama):
    cfg = GPTQConfig(bits=2, group_size=32)
    a, b = copy.deepcopy(tiny_llama), copy.deepcopy(tiny_llama)
    ra = gptq_quantize_model(a, _calibration(), cfg, inputs_from="quantized", progress=False)
    rb = gptq_quantize_model(b, _calibration(), cfg, inputs_from="fp", progress=False)
    first = [n for n in ra if n.startswith("model.layers.0.")]
    later = [n for n in ra if n.startswith("model.layers.1.")]
    assert all(torch.equal(ra[n].weight, rb[n].weight) for n in first)
    assert any(not torch.equal(ra[n].weight, rb[n].weight) for n in later)
    with pytest.raises(ValueError, match="inputs_from"):
        gptq_quantize_model(a, _calibration(), cfg, inputs_from="teacher")


def test_layers_reading_the_same_input_share_one_hessian(tiny_llama):
    from quantedu.calibration import capture_block_inputs, linear_layers
    from quantedu.gptq import _input_owners

    hidden, kwargs = capture_block_inputs(tiny_llama, _calibration(1, 16))
    block = tiny_llama.model.layers[0]
    owner = _input_owners(block, linear_layers(block), hidden[0], kwargs)
    groups = {}
    for name, first in owner.items():
        groups.setdefault(first, []).append(name)
    assert sorted(map(sorted, groups.values())) == [
        ["mlp.down_proj"], ["mlp.gate_proj", "mlp.up_proj"], ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"]]


def test_stacking_layers_that_share_a_hessian_changes_nothing():
    W, H = random_problem(48, 64, seed=11)
    cfg = GPTQConfig(bits=4, group_size=16, desc_act=True)
    whole = gptq_quantize_weight(W, H, cfg)
    top, bottom = gptq_quantize_weight(W[:20], H, cfg), whole.rows(20, 48)
    part = whole.rows(0, 20)
    assert (part.codes != top.codes).sum() <= 2  # matmul blocking may reorder float sums only
    assert torch.equal(part.g_idx, top.g_idx) and part.loss == pytest.approx(top.loss, rel=1e-3)
    assert bottom.codes.shape == (28, 64) and whole.loss == pytest.approx(part.loss + bottom.loss, rel=1e-5)
