"""Enough calibration: tokens against the widest linear input, and GPTQ/AWQ calling a starved run inconclusive."""
import copy
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from quantedu import awq, gptq
from quantedu.calibration import budget


def test_the_course_model_needs_3072_tokens_and_fast_mode_has_1024():
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):  # the course model's shapes, no memory
        model = LlamaForCausalLM(cfg)
    fast = budget(model, torch.zeros(4, 256, dtype=torch.long))
    assert (fast.widest_input, fast.widest_layer, fast.minimum, fast.tokens) == (1536, "mlp.down_proj", 3072, 1024)
    assert not fast.enough and "inconclusive" in str(fast)
    assert budget(model, torch.zeros(6, 512, dtype=torch.long)).enough


def starved_and_fed(tiny_llama):
    widest = budget(tiny_llama, torch.zeros(1, 1, dtype=torch.long)).widest_input  # 128: mlp.down_proj
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (1, widest), generator=gen),          # 1 token per input
            torch.randint(0, 256, (4, widest // 2), generator=gen))     # 2 tokens per input


@pytest.mark.parametrize("quantize", [
    lambda m, ids: gptq.gptq_quantize_model(m, ids, gptq.GPTQConfig(bits=4, group_size=32), progress=False),
    lambda m, ids: awq.awq_quantize_model(m, ids, awq.AWQConfig(bits=4, group_size=32, n_grid=2, clip=False),
                                          progress=False),
], ids=["gptq", "awq"])
def test_a_starved_calibration_warns_inconclusive_and_enough_stays_quiet(tiny_llama, quantize):
    starved, fed = starved_and_fed(tiny_llama)
    with pytest.warns(UserWarning, match="inconclusive"):
        quantize(copy.deepcopy(tiny_llama), starved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        quantize(copy.deepcopy(tiny_llama), fed)


def test_strict_mode_refuses_starved_calibration_unless_the_notebook_says_why(tiny_llama, monkeypatch, capsys):
    """What CI's notebook runs see (conftest sets QUANTEDU_STRICT_CALIBRATION): an error, or a printed
    'inconclusive' with the reason the notebook gave."""
    import torch

    from quantedu import calibration

    short = torch.randint(0, 256, (1, 16))
    monkeypatch.setenv(calibration.STRICT_ENV, "1")
    with pytest.raises(calibration.CalibrationBudgetError, match="inconclusive"):
        calibration.warn_if_starved(tiny_llama, short, "GPTQ")
    with calibration.inconclusive("a lesson about starved calibration"):
        b = calibration.warn_if_starved(tiny_llama, short, "GPTQ")
    assert not b.enough
    assert "inconclusive" in capsys.readouterr().out
    assert calibration.warn_if_starved(tiny_llama, torch.randint(0, 256, (8, 64)), "GPTQ").enough
