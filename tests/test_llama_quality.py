"""llama.cpp's full-vocabulary predictions against a torch baseline on the baseline's own windows
(quantedu.engines.llama_cpp.bindings.quality_report, notebook 07's llama.cpp rows).

A random Llama with the course tokenizer's vocabulary (the GGUF writer copies that tokenizer) is written by the
course's writer as F32 and as Q4_0. The F32 file runs the same arithmetic as torch up to float error (llama.cpp keeps its
KV cache in f16 by default), so every per-token metric nearly vanishes: a window fed with a BOS, shifted by one
position or scored on the wrong rows would not. Seconds.
"""
import pytest
import torch
from helpers import require_module

from quantedu.evaluate import Baseline
from quantedu.testmodel import tiny_llama

VOCAB = 49152  # the offline tokenizer's, which write_gguf copies into the file


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    require_module("llama_cpp")
    from quantedu.gguf import io as gguf_io
    from helpers import offline_gguf
    offline_gguf()  # the writer copies its tokenizer metadata
    # sharper predictions than the default init (std 0.02 gives a nearly uniform next-token distribution)
    model = tiny_llama(seed=1, vocab_size=VOCAB, hidden_size=64, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2)
    root = tmp_path_factory.mktemp("llama-quality")
    gguf_io.write_gguf(model, root / "f32.gguf", "F32")
    gguf_io.write_gguf(model, root / "q4_0.gguf", "Q4_0")
    windows = torch.randint(0, VOCAB, (2, 96), generator=torch.Generator().manual_seed(0))
    return model, root, windows


def test_an_f32_file_reproduces_the_torch_baseline_token_by_token(files):
    from quantedu.engines.llama_cpp import bindings
    model, root, windows = files
    base = Baseline(model, windows)
    r = bindings.quality_report(root / "f32.gguf", base, "F32")
    assert r.tokens == 2 * 95 and r.baseline_id == base.id
    print(f"\nF32 in llama.cpp vs torch: mean KLD {r.kld.mean:.2e}, max {r.kld_percentile(100):.2e}, "
          f"same top {r.same_top.mean:.2%}, perplexity ratio {r.ppl / r.ppl_base - 1:+.2e}")
    assert r.kld.mean < 1e-4 and r.kld_percentile(100) < 1e-2, r
    assert r.per_token["same_top"].mean() >= 0.98
    assert abs(r.ppl / r.ppl_base - 1) < 1e-3
    # positions from score_from on, as the torch side scores them (llama-perplexity's protocol: second half)
    half = Baseline(model, windows, score_from=48)
    assert bindings.quality_report(root / "f32.gguf", half).tokens == 2 * (95 - 48)


def test_a_quantized_file_diverges_and_pairs_with_torch_reports(files):
    from quantedu.engines.llama_cpp import bindings
    model, root, windows = files
    base = Baseline(model, windows)
    f32 = bindings.quality_report(root / "f32.gguf", base, "F32")
    q4 = bindings.quality_report(root / "q4_0.gguf", base, "Q4_0")
    print(f"\nQ4_0: mean KLD {q4.kld.mean:.2e} (F32 {f32.kld.mean:.2e})")
    assert q4.kld.mean > 30 * f32.kld.mean
    v = q4.verdict(f32, metric="kld")  # same baseline, same tokens: the rule pairs them
    assert v.winner in ("F32", None) and v.interval.tokens == q4.tokens


def test_another_vocabulary_is_refused_with_the_reason(files):
    from quantedu.engines.llama_cpp import bindings
    _, root, _ = files
    small = tiny_llama()  # 256 tokens
    base = Baseline(small, torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="another vocabulary"):
        bindings.quality_report(root / "f32.gguf", base)
