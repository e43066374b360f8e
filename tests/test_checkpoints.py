"""quantedu.course.checkpoints: a GPTQ/AWQ checkpoint made once per settings, shared through the cache, timed, and
read back as the weights an engine serves (the tiny Llama: seconds)."""
from types import SimpleNamespace

import pytest
import torch

from quantedu.awq import AWQConfig
from quantedu.calibration import inconclusive
from quantedu.course import checkpoints
from quantedu.gptq import GPTQConfig


def _session(model):
    def calibration(n, seq_len, seed=0):
        return torch.randint(0, model.config.vocab_size, (n, seq_len), generator=torch.Generator().manual_seed(seed))
    return SimpleNamespace(model=model, model_name="tiny", dtype_name="fp32", quant_threads=1,
                           corpus=SimpleNamespace(name="random"), tokenizer=None, calibration=calibration)


def test_made_once_then_read_from_the_cache(tiny_llama, tmp_cache):
    session = _session(tiny_llama)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    cfg = GPTQConfig(bits=4, group_size=32, sym=False)
    with inconclusive("a tiny random model: only the caching is tested"):
        first = checkpoints.quantize(session, cfg, 4, 64)
        again = checkpoints.quantize(session, cfg, 4, 64)
        awq = checkpoints.quantize(session, AWQConfig(bits=4, group_size=32, sym=False), 4, 64)
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())  # a copy was quantized
    assert again == first and first.wall_s > 0 and first.threads == 1  # the second call ran nothing
    assert first.tokens == 256 and first.calibration == "4 x 64 tokens" and first.method == "gptq"
    assert awq.method == "awq" and awq.path != first.path
    w = first.model().model.layers[0].mlp.down_proj.weight
    ref = tiny_llama.model.layers[0].mlp.down_proj.weight
    groups = w.detach().reshape(w.shape[0], -1, 32)
    assert max(len(g.unique()) for row in groups for g in row) <= 16  # 4 bits: at most 16 values per group
    assert not torch.equal(w, ref) and (w - ref).abs().mean() < 0.2 * ref.abs().mean()


def test_another_config_type_is_refused():
    with pytest.raises(TypeError, match="GPTQConfig or quantedu.awq.AWQConfig"):
        checkpoints.method_of({"bits": 4})


def test_the_older_layouts_vllm_serves_with_quantization_gptq_or_awq(tiny_llama, tmp_cache):
    """layout="gptq" writes GPTQ v1's tensors, layout="awq" AutoAWQ's; the same weights come back either way."""
    from safetensors.torch import load_file

    session = _session(tiny_llama)
    gptq, awq = GPTQConfig(bits=4, group_size=32, sym=True), AWQConfig(bits=4, group_size=32, sym=False)
    with inconclusive("a tiny random model: only the layouts are tested"):
        ct = checkpoints.quantize(session, gptq, 4, 64)
        v1 = checkpoints.quantize(session, gptq, 4, 64, layout="gptq")
        aw = checkpoints.quantize(session, awq, 4, 64, layout="awq")
        with pytest.raises(ValueError, match="'awq' for an AWQ config"):
            checkpoints.quantize(session, gptq, 4, 64, layout="awq")
    names = set(load_file(next(v1.path.glob("*.safetensors"))))
    assert {"model.layers.0.mlp.down_proj.qweight", "model.layers.0.mlp.down_proj.g_idx"} <= names
    assert "model.layers.0.mlp.down_proj.qzeros" in set(load_file(next(aw.path.glob("*.safetensors"))))
    w = lambda c: c.model().model.layers[0].mlp.down_proj.weight  # noqa: E731
    assert v1.path != ct.path and torch.equal(w(v1), w(ct))


def test_smoothquant_w8a8_is_written_once_and_read_back_as_the_int8_emulation(tiny_llama, tmp_cache):
    """Notebook 07's W8A8 row: SmoothQuant + W8A8 of a copy, cached, read back with W8A8Linear layers whose
    outputs match the unquantized model's to int8 precision; alpha outside [0, 1] is refused."""
    from quantedu.w8a8 import W8A8Linear

    session = _session(tiny_llama)
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    first = checkpoints.smoothquant_w8a8(session, 0.5, 4, 64)
    again = checkpoints.smoothquant_w8a8(session, 0.5, 4, 64)
    assert all(torch.equal(before[k], v) for k, v in tiny_llama.state_dict().items())
    assert again == first and first.method == "w8a8" and first.label == "SmoothQuant W8A8 (alpha 0.5)"
    assert checkpoints.smoothquant_w8a8(session, 0.8, 4, 64).path != first.path
    model = first.model()
    assert isinstance(model.model.layers[0].mlp.down_proj, W8A8Linear)
    ids = session.calibration(1, 32, seed=7)
    with torch.no_grad():
        ref, out = tiny_llama(ids).logits, model(ids).logits
    assert 0 < float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())
    with pytest.raises(ValueError, match="alpha"):
        checkpoints.smoothquant_w8a8(session, 1.5, 4, 64)
