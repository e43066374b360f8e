"""quantedu.course.runs (cached quantized runs, their reports and tables, a few blocks swapped into the whole
model) and the single-layer measurements behind notebook 03's sweeps (gptq.layer_hessians, gptq.output_error,
calibration.layer_inputs / samples_needed, course.layer_sweep) and notebook 04's statistics
(awq.channel_magnitudes); the figures of both notebooks draw from them."""
import copy

import numpy as np
import pytest
import torch

from quantedu import awq, calibration, gptq
from quantedu.course import layer_sweep, runs
from quantedu.course import session as session_module
from quantedu.data import load_corpus
from quantedu.testmodel import tiny_llama


class CharTokenizer:
    """Characters as token ids (vocabulary 256): enough for windows of real text on the tiny model."""

    def __call__(self, text, **_):
        return {"input_ids": [ord(c) % 256 for c in text]}

    def get_vocab(self):
        return {chr(i): i for i in range(256)}

    def save_pretrained(self, folder):
        (folder / "tokenizer.txt").write_text("characters as ids")


@pytest.fixture
def session(monkeypatch, tmp_cache):
    monkeypatch.setattr(session_module, "WINDOWS", {"eval": ("pydoc", 2, 64), "heldout": ("pysource", 2, 64),
                                                    "sweep": ("pydoc", 1, 64)})
    return session_module.Session(tiny_llama(seed=1, varied=True), CharTokenizer(), load_corpus("pydoc"), "tiny")


def calib(session, n=8, seq_len=64):  # 512 tokens: twice the tiny model's widest input (128)
    return session.calibration(n, seq_len)


def linear_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method, config", [
    ("gptq", gptq.GPTQConfig(bits=4, group_size=32, sym=False, static_groups=True)),
    ("awq", awq.AWQConfig(bits=4, group_size=32, n_grid=4, clip_grid=4)),
], ids=["gptq", "awq"])
def test_a_run_is_cached_and_rebuilt_bit_for_bit(session, method, config, monkeypatch):
    batches = calib(session)
    first = runs.quantize(session, method, config, batches, keep=True)
    made = linear_state(first.model)
    assert first.wall_s > 0 and first.tokens == batches.numel() and first.calibration == "8 x 64"
    changed = [k for k, v in made.items() if not torch.equal(v, session.model.state_dict()[k])]
    assert any(k.endswith("q_proj.weight") for k in changed)
    if method == "awq":  # the folded norms are part of the run
        assert any("layernorm" in k for k in changed)

    # a second call reads the cache: the algorithm must not run again
    monkeypatch.setattr(runs, "_quantize", lambda run: pytest.fail("quantized again instead of reading the cache"))
    again = runs.quantize(session, method, config, batches)
    assert again.key == first.key and again.wall_s == first.wall_s
    rebuilt = linear_state(again.model)
    assert set(rebuilt) == set(made) and all(torch.equal(rebuilt[k], made[k]) for k in made)
    for name, layer in first.layers.items():
        assert torch.equal(again.layers[name].codes, layer.codes) and torch.equal(again.layers[name].weight, layer.weight)
    assert session.model.state_dict()["model.layers.0.self_attn.q_proj.weight"].data_ptr() != \
        again.model.state_dict()["model.layers.0.self_attn.q_proj.weight"].data_ptr()


def test_another_calibration_or_config_is_another_run(session):
    a = runs.quantize(session, "gptq", gptq.GPTQConfig(4, 32), calib(session))
    b = runs.quantize(session, "gptq", gptq.GPTQConfig(4, 32), session.calibration(8, 64, seed=1))
    c = runs.quantize(session, "gptq", gptq.GPTQConfig(3, 32), calib(session))
    assert len({a.key, b.key, c.key}) == 3


def test_reports_are_cached_per_window_set_and_verdicts_pair_them(session):
    batches = calib(session)
    r = runs.quantize(session, "rtn", gptq.GPTQConfig(4, 32), purposes=("eval", "heldout"))
    g = runs.quantize(session, "gptq", gptq.GPTQConfig(4, 32), batches, purposes=("eval",))
    assert g._model is None and r._model is None  # released after reporting
    direct = session.report(g.model, "direct", "eval")
    cached = runs.quantize(session, "gptq", gptq.GPTQConfig(4, 32), batches).report("eval")
    np.testing.assert_allclose(cached.per_token["kld"], direct.per_token["kld"], rtol=1e-6, atol=1e-9)
    assert cached.name == g.name and cached.baseline_id == session.baseline("eval").id
    assert g.report("eval").verdict(r.report("eval")).interval.tokens == direct.tokens
    table = runs.table([r, g])
    assert list(table.index) == [r.name, g.name] and table.loc[r.name, "calibration"] == "none"
    assert table.loc[g.name, "quantize s (wall / CPU)"] != "-"
    dom = runs.domain_table([r, g])
    assert {"eval", "heldout"} == set(dom.columns.get_level_values(0)) and "mean KLD" in dom["heldout"]


def test_rtn_takes_no_calibration_and_gptq_needs_it(session):
    with pytest.raises(ValueError, match="no calibration"):
        runs.quantize(session, "rtn", gptq.GPTQConfig(4, 32), calib(session))
    with pytest.raises(ValueError, match="calibration batches"):
        runs.quantize(session, "gptq", gptq.GPTQConfig(4, 32))
    with pytest.raises(ValueError, match="method"):
        runs.quantize(session, "smoothquant", gptq.GPTQConfig(4, 32))


def test_a_few_blocks_truncated_quantized_and_swapped_back(session):
    model = session.model
    small = runs.truncated_model(model, 1)
    assert len(small.model.layers) == 1 and small.config.num_hidden_layers == 1
    assert len(model.model.layers) == 2  # the original keeps its blocks
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    same = runs.with_blocks(model, small)
    assert torch.equal(same(ids).logits, model(ids).logits)  # nothing quantized: the same model
    part = runs.quantize(session, "gptq", gptq.GPTQConfig(4, 32), calib(session), blocks=1, keep=True)
    changed = {k.split(".")[2] for k, v in part.model.state_dict().items()
               if k.startswith("model.layers.") and not torch.equal(v, model.state_dict()[k])}
    assert changed == {"0"} and set(part.layers) == {n for n in part.layers if n.startswith("model.layers.0.")}
    counts = runs.identical_weights(part.model, model)
    assert counts[1][0] == counts[1][1] and counts[0][0] < counts[0][1]
    with pytest.raises(ValueError, match="blocks"):
        runs.truncated_model(model, 3)
    folder = runs.truncated_checkpoint(session, 1)
    assert (folder / "config.json").is_file() and runs.truncated_checkpoint(session, 1) == folder


def test_samples_needed_reach_the_budget(tiny_llama):
    n = calibration.samples_needed(tiny_llama, 64)
    assert calibration.budget(tiny_llama, torch.zeros(n, 64, dtype=torch.long)).enough
    assert not calibration.budget(tiny_llama, torch.zeros(n - 1, 64, dtype=torch.long)).enough
    assert calibration.samples_needed(tiny_llama, 64, at_least=50) == 50
    with pytest.raises(ValueError, match="seq_len"):
        calibration.samples_needed(tiny_llama, 0)


def test_layer_hessians_are_gptqs_and_output_error_is_its_objective(tiny_llama):
    batches = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(3))
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    H = gptq.layer_hessians(tiny_llama, batches, names)
    Hs = gptq.layer_hessians(tiny_llama, batches, names, per_sample=True)
    X = calibration.layer_inputs(tiny_llama, batches, names)
    for n in names:
        assert Hs[n].shape[0] == 8
        torch.testing.assert_close(Hs[n].mean(0), H[n], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(H[n], 2 * X[n].T @ X[n] / 8, rtol=1e-4, atol=1e-6)  # 2/n sum x x^T
    W = tiny_llama.get_submodule(names[0]).weight.detach()
    Q = gptq.gptq_quantize_weight(W, H[names[0]], gptq.GPTQConfig(4, 32)).weight
    E, Hx = W - Q, X[names[0]].T @ X[names[0]]
    err = gptq.output_error(W, Q, X[names[0]])
    assert err.shape == (512,)
    torch.testing.assert_close(err.mean(), torch.trace(E @ Hx @ E.T) / torch.trace(W @ Hx @ W.T), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="no linear layer"):
        calibration.layer_inputs(tiny_llama, batches, ["model.layers.0.q_proj"])


def test_layer_inputs_keep_token_order(tiny_llama):
    batches = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(4))
    name = "model.layers.0.self_attn.q_proj"
    X = calibration.layer_inputs(tiny_llama, batches, [name])[name]
    one = calibration.layer_inputs(tiny_llama, batches[1:2], [name])[name]
    torch.testing.assert_close(X[16:32], one)


def test_the_sweep_calls_a_clear_loser_worse_and_a_setting_a_tie_with_itself(tiny_llama):
    batches = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(5))
    names = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.up_proj"]
    H = gptq.layer_hessians(tiny_llama, batches, names)
    X = calibration.layer_inputs(tiny_llama, batches[:4], names)
    W = {n: tiny_llama.get_submodule(n).weight.detach() for n in names}
    g32 = lambda W, H: gptq.gptq_quantize_weight(W, H, gptq.GPTQConfig(4, 32)).weight  # noqa: E731
    settings = {"W4": g32, "W4 again": g32,
                "W2": lambda W, H: gptq.gptq_quantize_weight(W, H, gptq.GPTQConfig(2, 32)).weight}
    errors = layer_sweep.sweep(W, H, X, settings, n_windows=4)
    assert errors["W4"].shape == (4, 64)
    best, verdicts = layer_sweep.best_and_ties(errors, ["W4", "W4 again", "W2"])
    assert best in ("W4", "W4 again") and verdicts["W2"].winner == best
    other = "W4 again" if best == "W4" else "W4"
    assert verdicts[other].tie
    with pytest.raises(ValueError, match="same layers"):
        layer_sweep.sweep(W, {names[0]: H[names[0]]}, X, settings, 4)


def test_damping_sweep_shapes_and_more_damping_moves_towards_rtn(tiny_llama):
    batches = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(6))
    name = "model.layers.1.mlp.down_proj"
    Hs = gptq.layer_hessians(tiny_llama, batches, [name], per_sample=True)[name]
    X = calibration.layer_inputs(tiny_llama, batches[:2], [name])[name]
    W = tiny_llama.get_submodule(name).weight.detach()
    out = layer_sweep.damping_sweep(W, Hs, X, (2, 8), (0.01, 0.999), gptq.GPTQConfig(4, 32), 2)
    assert set(out) == {(2, 0.01), (2, 0.999), (8, 0.01), (8, 0.999)} and out[8, 0.01].shape == (2, 64)
    with pytest.raises(ValueError, match="Hessians"):
        layer_sweep.damping_sweep(W, Hs, X, (9,), (0.01,), gptq.GPTQConfig(4, 32), 2)


def test_channel_magnitudes_are_the_mean_absolute_inputs(tiny_llama):
    batches = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(7))
    mags = awq.channel_magnitudes(tiny_llama, batches)
    name = "model.layers.1.mlp.gate_proj"
    X = calibration.layer_inputs(tiny_llama, batches, [name])[name]
    torch.testing.assert_close(mags[name], X.abs().mean(0))
    assert len(mags) == 2 * 7


def test_figures_draw_from_real_steps(tiny_llama):
    import matplotlib
    matplotlib.use("Agg")
    from quantedu.course.figures import awq as awq_figures
    from quantedu.course.figures import gptq as gptq_figures

    batches = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(8))
    name = "model.layers.0.self_attn.q_proj"
    H = gptq.layer_hessians(tiny_llama, batches, [name])[name]
    W = tiny_llama.get_submodule(name).weight.detach()
    fb = gptq_figures.error_feedback(W, H, gptq.GPTQConfig(4, 32, block_size=64))
    assert fb.error.shape == (64, 64) and float(fb.moved[:, 0].abs().max()) == 0  # nothing before column 0
    assert float(fb.error.abs().max()) <= 0.5 + 1e-4 + float(fb.moved.abs().max())  # codes round to nearest
    assert float(fb.update(5)[:, :6].abs().max()) == 0 and 0 <= float(fb.differs.mean()) <= 1
    assert len(gptq_figures.plot_error_feedback(fb, column=2, rows=16, cols=32).axes) >= 4
    errors = {"a": np.full((2, 8), 0.01), "b": np.full((2, 8), 0.02) + np.random.default_rng(0).normal(0, 1e-3, (2, 8))}
    ax = gptq_figures.plot_knobs(errors, {"knob": ["a", "b"]})
    assert len(ax.patches) == 2
    ax = gptq_figures.plot_damping({(1, 0.1): errors["a"], (1, 0.3): errors["b"]}, (1,), (0.1, 0.3), 64, 128)
    assert "starved" in ax.get_legend().get_texts()[0].get_text()
    fig = awq_figures.plot_channel_magnitudes(torch.rand(64), torch.rand(64))
    assert len(fig.axes) == 2
    ax = awq_figures.plot_scale_search([0, 0.5], {"all": [1.0, 0.5]})
    assert len(ax.lines) == 3


def test_baselines_name_each_window_set_and_its_perplexity(session):
    lines = runs.baselines(session, ("eval", "heldout")).splitlines()
    assert [ln.split()[0] for ln in lines] == ["eval", "heldout"]
    assert "of pydoc" in lines[0] and "of pysource" in lines[1]
    b = session.baseline("heldout")
    nll = -b.logprobs.gather(-1, b.targets.unsqueeze(-1)).mean().item()
    assert lines[1].endswith(f"perplexity {np.exp(nll):.2f}")
