"""The planner against vLLM itself (issue 25): the tensor-parallel slices vLLM builds on each rank, the KV cache
it allocates per token, and its refusal of heads that do not divide - one vLLM worker process for the module.

Why shapes and KV bytes, not "weights loaded": vLLM's CPU backend does not report its model memory (the GPU
runner's "Model loading took X GiB" line), and after loading it repacks every linear weight into oneDNN handles
outside the module's parameters, so the loaded bytes are not observable here. What is observable, and what the
plan's bytes are made of, is each rank's partition of every layer (``output_size_per_partition``,
``input_size_per_partition``, ``num_embeddings_per_partition``) and the KV cache vLLM sizes from those heads:
``kv_cache_memory_bytes`` buys ``blocks x block_size`` tokens. Bytes measured in a running engine are checked
for llama.cpp in tests/test_recipe_gguf.py (its own buffer sizes).

Tensor parallelism 2 on this 2-core CPU needs ``VLLM_CPU_OMP_THREADS_BIND="0|1"`` (one core per rank).
"""
import pytest
from helpers import side_python

from quantedu import memory, testmodel
from quantedu import plan as P
from quantedu.engines import vllm as ve

pytestmark = pytest.mark.slow  # one engine start per module: 25-60 s, still run in CI
KV_BYTES = 64 * 2**20


@pytest.fixture(scope="module")
def measured():
    python = side_python(ve.require_python, ve.MissingVLLMError, ve.unavailable_reason, ".venv-vllm")
    from transformers import AutoTokenizer

    from quantedu.data import load_corpus
    from quantedu.evaluate import evaluation_windows
    from quantedu.models import offline_checkpoint

    ci = str(testmodel.test_model_path())
    windows = evaluation_windows(AutoTokenizer.from_pretrained(ci), load_corpus("pydoc"), 2, 128)
    runs = {"ci tp2": {"model": ci, "tensor_parallel_size": 2}, "ci tp1": {"model": ci},
            "course tp1": {"model": str(offline_checkpoint())},
            "course tp2": {"model": str(offline_checkpoint()), "tensor_parallel_size": 2}}
    runs = {k: {**v, "kv_cache_bytes": KV_BYTES, "max_model_len": 512} for k, v in runs.items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # with "auto" two CPU ranks die on one NUMA node
        return ci, ve.vllm_perplexities(runs, windows, python=python, timeout=600)


def _expected(shape, tp):
    """Each vLLM module's (rows, columns) on one rank, from the plan's split of ``shape``."""
    r, lin = P.rank_shape(shape, tp), P.rank_shape(shape, tp).linear_shapes()
    return {"self_attn.qkv_proj": [lin["q_proj"][0] + 2 * lin["k_proj"][0], shape.hidden],
            "self_attn.o_proj": list(lin["o_proj"]), "mlp.gate_up_proj": [2 * lin["gate_proj"][0], shape.hidden],
            "mlp.down_proj": list(lin["down_proj"]), "embed_tokens": [r.vocab, shape.hidden]}


@pytest.mark.parametrize("run,tp", [("ci tp2", 2), ("ci tp1", 1), ("course tp1", 1)])
def test_every_rank_holds_the_planned_slice(measured, run, tp):
    ci, results = measured
    res = results[run]
    assert res.get("error") is None, res.get("error")
    shape = memory.model_shape(ci if run.startswith("ci") else "smollm2-135m")
    assert len(res["shards"]) == tp  # one answer per rank, all the same split
    want = _expected(shape, tp)
    for rank in res["shards"]:
        got = {k.removeprefix("model.").split(".", 2)[-1] if ".layers." in k else k.removeprefix("model."): v
               for k, v in rank.items() if ".layers.0." in k or "layers" not in k}
        assert {k: got[k] for k in want} == want
        assert got["lm_head"] == want["embed_tokens"]  # vocab-parallel head (tied: the embedding's storage)


@pytest.mark.parametrize("run,tp", [("ci tp2", 2), ("ci tp1", 1), ("course tp1", 1)])
def test_kv_cache_per_token_is_the_planned_one(measured, run, tp):
    ci, results = measured
    kv = results[run]["kv_cache"]
    shape = memory.model_shape(ci if run.startswith("ci") else "smollm2-135m")
    per_token = P.plan(shape, gpus=tp, scheme="bf16", context=512).kv_per_token
    assert kv["blocks"] == kv["bytes"] // (kv["block_size"] * per_token)  # whole blocks of the planned bytes/token
    print(f"{run}: vLLM made {kv['blocks']} blocks of {kv['block_size']} tokens from {kv['bytes'] / 2**20:.0f} MiB; "
          f"the plan's {per_token:.0f} B/token gives {kv['bytes'] / (kv['block_size'] * per_token):.2f}")


def test_tensor_parallel_2_computes_what_one_rank_does(measured):
    results = measured[1]
    tp1, tp2 = results["ci tp1"]["ppl"], results["ci tp2"]["ppl"]
    print(f"CI test model through vLLM: ppl TP=1 {tp1:.3f}, TP=2 {tp2:.3f}; load TP=2 "
          f"{results['ci tp2']['load_s']:.1f} s")
    assert abs(tp2 - tp1) / tp1 < 0.005  # bf16 sums split across two ranks: rounding differs, nothing else


def test_heads_that_do_not_divide_are_refused_as_the_plan_says(measured):
    error = measured[1]["course tp2"]["error"]
    with pytest.raises(P.PlanError) as planned:
        P.rank_shape(memory.model_shape("smollm2-135m"), 2)
    said = ve.reason(error)
    assert said == "Total number of attention heads (9) must be divisible by tensor parallel size (2)."
    assert str(planned.value).startswith(said)
