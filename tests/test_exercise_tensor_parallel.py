"""Notebook 10's exercise (weights per GPU under tensor parallelism): the reference solution is vLLM's sharding as
quantedu.plan models it; the usual slips, each named by the checker, are in tests/test_exercises.py (WRONG)."""

import pytest

from quantedu import memory
from quantedu import plan as planner
from quantedu.exercises import FAILED, PASSED, grade
from quantedu.exercises import tensor_parallel as T


def test_the_reference_solution_passes_every_input():
    res = grade("10.rank_weights", T.rank_weight_bytes)
    assert res.status == PASSED and res.checked == 5


def test_the_whole_model_divided_by_the_gpus_is_caught():
    res = grade("10.rank_weights", lambda shape, tp: memory.weight_bytes(shape, "bf16")["total"] / tp)
    assert res.status == FAILED and "splits the norms" in res.message, res.message


def test_the_rank_of_70b_on_16_gpus_keeps_one_kv_head():
    """The input that exposes KV replication really has fewer KV heads than GPUs (vLLM replicates them)."""
    shape = memory.model_shape("llama-3.1-70b")
    assert shape.kv_heads < 16 and planner.rank_shape(shape, 16).kv_heads == 1


def test_the_cluster_quiz_keys_are_the_plans():
    """Notebook 10's quiz: its numeric keys are what quantedu.plan computes for the questions' deployments."""
    import json

    from quantedu.course.quiz import QUIZ_DIR
    from quantedu.memory import GIB

    keys = {q["id"]: q for q in json.loads((QUIZ_DIR / "cluster.json").read_text())["questions"]}
    p = planner.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=80, scheme="w4a16")
    q = keys["weights-70b-tp4"]
    assert q["answer"] == pytest.approx(p.per_gpu["weights"] / GIB, rel=1e-4)
    slips = [m["value"] for m in q["mistakes"]]
    assert slips == pytest.approx([planner.plan("llama-3.1-70b", gpus=1, gpu_memory_gb=80, scheme="w4a16")
                                   .per_gpu["weights"] / GIB,
                                   planner.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=80, scheme="bf16")
                                   .per_gpu["weights"] / GIB], rel=1e-4)
    assert keys["kv-70b-tp4"]["answer"] == p.kv_per_token / 2**10
    assert not planner.plan("llama-3.1-70b", gpus=1, gpu_memory_gb=24, scheme="w4a16").fits
    assert planner.plan("llama-3.1-70b", gpus=4, gpu_memory_gb=24, scheme="w4a16").fits  # the keyed fix fits
