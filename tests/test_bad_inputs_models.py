"""Bad-input matrix for quantedu.models (issue 10): dtype / device names, mistyped local paths, and
damaged checkpoints (a local folder, or the cache entry of the converted course model).

Every bad input must end in a ModelError that says what to do; the neighbouring good inputs must keep
working. Tiny random Llama checkpoints stand in for real models (milliseconds, no download)."""
import pytest
from helpers import offline_gguf
import torch

from quantedu import artifacts, models


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("QUANTEDU_CACHE", str(tmp_path / "cache"))


def save_tiny(folder):
    """A 1-layer random Llama + a 3-word tokenizer, as a local checkpoint folder."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tok_models
    from transformers import PreTrainedTokenizerFast

    from quantedu.testmodel import tiny_llama

    tok = Tokenizer(tok_models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(folder)
    tiny_llama(vocab_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=False).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_ckpt(tmp_path):
    return save_tiny(tmp_path / "tiny-ckpt")


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------ dtype

@pytest.mark.parametrize("name, expected", [
    ("fp16", torch.float16), ("FP16", torch.float16), ("f16", torch.float16), ("torch.float16", torch.float16),
    ("bf16", torch.bfloat16), ("fp32", torch.float32), ("f32", torch.float32), (" fp32 ", torch.float32),
])
def test_common_dtype_aliases_are_accepted(name, expected):
    assert models.pick_dtype(torch.device("cpu"), name) == expected


@pytest.mark.parametrize("name, expected", [  # worked before too: torch attribute names and dtypes
    ("float16", torch.float16), ("half", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32),
    ("float", torch.float32), (torch.bfloat16, torch.bfloat16), (None, torch.float32),
])
def test_torch_dtype_names_and_default_still_work(name, expected):
    assert models.pick_dtype(torch.device("cpu"), name) == expected


def test_auto_dtype_is_the_default():
    assert models.pick_dtype(torch.device("cpu"), "auto") == torch.float32


@pytest.mark.parametrize("bad", ["fp8", "q4", "nope", "int8", "int4", torch.int8, 16])
def test_unknown_or_integer_dtype_is_a_model_error_listing_names(bad):
    with pytest.raises(models.ModelError, match="'fp16'|floating-point"):
        models.pick_dtype(torch.device("cpu"), bad)


def test_dtype_alias_reaches_the_loaded_model(tiny_ckpt):
    model, tok = models.load_model(str(tiny_ckpt), device="cpu", dtype="fp16", verbose=False)
    assert next(model.parameters()).dtype == torch.float16
    assert tok("hello world").input_ids == [1, 2]


# ----------------------------------------------------------------------------------------- device

def test_gpu_is_not_a_device_name_and_the_error_says_what_to_use():
    want = "device='cuda'" if torch.cuda.is_available() else "device='cpu'"
    with pytest.raises(models.ModelError, match=want):
        models.pick_device("gpu")


def test_mps_says_whether_it_is_available():
    if torch.backends.mps.is_available():
        assert models.pick_device("mps").type == "mps"
    else:
        with pytest.raises(models.ModelError, match="mps.*not available"):
            models.pick_device("mps")


@pytest.mark.parametrize("bad", ["tpu", "xyz", "cpu:x", "cuda:", 0])
def test_garbage_device_lists_valid_names(bad):
    with pytest.raises(models.ModelError, match="'auto', 'cpu', 'cuda'"):
        models.pick_device(bad)


def test_cuda_index_beyond_the_gpus_is_refused_good_before_on_cpu():
    with pytest.raises(models.ModelError, match="cuda"):
        models.pick_device(f"cuda:{torch.cuda.device_count() + 3}")


@pytest.mark.parametrize("device", ["cpu", "CPU", " cpu ", torch.device("cpu")])
def test_cpu_spellings_and_device_objects(device):
    assert models.pick_device(device) == torch.device("cpu")


def test_auto_device_good_before():
    assert models.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_none_device_means_auto():
    assert models.pick_device(None) == models.pick_device("auto")


# ---------------------------------------------------------------------------- mistyped local paths

@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "models" / "mymodel").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_typo_in_a_folder_that_exists_is_not_sent_to_the_hub(workdir):
    with pytest.raises(models.ModelError, match=r"no such local checkpoint.*did you mean .*models/mymodel\?"):
        models.resolve("models/mymodle")


@pytest.mark.parametrize("name", ["./mymodel", "./models/nothing-like-it", "~/no-such-quantedu-ckpt-x1",
                                  "/no/such/ckpt", "a/b/c", "models\\mymodel2"])
def test_path_looking_names_that_do_not_exist_say_so(workdir, name):
    with pytest.raises(models.ModelError, match="no such local checkpoint") as info:
        models.resolve(name)
    assert "smollm2-135m" in str(info.value)  # and what else to use


def test_existing_local_folder_is_local_good_before(workdir):
    assert models.resolve("models/mymodel") == ("local", "models/mymodel")
    assert models.resolve("./models/mymodel")[0] == "local"


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "org/name", "Qwen/Qwen2.5-0.5B"])
def test_real_hub_ids_stay_hub_ids(workdir, hub_id):
    assert models.resolve(hub_id) == ("hub", hub_id)


@pytest.mark.parametrize("bad", ["org/my model", "org/", "/name"])
def test_malformed_hub_ids_are_refused(workdir, bad):
    with pytest.raises(models.ModelError):
        models.resolve(bad)


# ---------------------------------------------------------------------------------- damaged files

def test_truncated_safetensors_in_a_local_checkpoint_names_the_file(tiny_ckpt):
    truncate(tiny_ckpt / "model.safetensors")
    with pytest.raises(models.ModelError, match=r"model\.safetensors is truncated"):
        models.load_model(str(tiny_ckpt), device="cpu", verbose=False)


def test_garbage_safetensors_in_a_local_checkpoint_names_the_file(tiny_ckpt):
    (tiny_ckpt / "model.safetensors").write_bytes(b"not a tensor file " * 10)
    with pytest.raises(models.ModelError, match=r"model\.safetensors is truncated or not a safetensors"):
        models.load_model(str(tiny_ckpt), device="cpu", verbose=False)


def test_intact_local_checkpoint_loads_good_before(tiny_ckpt):
    model, _ = models.load_model(str(tiny_ckpt), device="cpu", verbose=False)
    assert model.quantedu_source == "local checkpoint" and not model.training


def test_folder_or_file_without_config_is_not_a_checkpoint(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelError, match="not a model checkpoint .a folder without config.json"):
        models.load_model(str(tmp_path / "empty"), device="cpu", verbose=False)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(models.ModelError, match="not a model checkpoint .a file"):
        models.load_model(str(tmp_path / "weights.bin"), device="cpu", verbose=False)


@pytest.fixture
def fake_offline_entry(tmp_path, monkeypatch):
    """The cache entry offline_checkpoint() would use, built from a tiny model instead of the GGUF."""
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    monkeypatch.setattr(models, "offline_gguf_path", lambda: gguf)
    key = artifacts.cache_key(models.OFFLINE_NAME, "fp32", models._CACHE_VERSION, gguf.stat().st_size)
    entry = artifacts.cached_dir("models", key, save_tiny)
    assert models.offline_checkpoint() == entry  # the very entry load_model reads
    return entry


def test_corrupt_cached_model_says_how_to_clear_it(fake_offline_entry):
    truncate(fake_offline_entry / "model.safetensors")
    with pytest.raises(models.ModelError, match=r"artifacts\.clear\('models'\)") as info:
        models.load_model(models.OFFLINE_NAME, device="cpu", verbose=False)
    assert str(fake_offline_entry) in str(info.value)
    artifacts.clear("models")  # the advice works: the damaged entry is gone, to be rebuilt
    assert not fake_offline_entry.exists()


def test_cached_model_with_unreadable_config_says_how_to_clear_it(fake_offline_entry):
    (fake_offline_entry / "config.json").write_text("{ this is not json")
    with pytest.raises(models.ModelError, match=r"artifacts\.clear\('models'\)"):
        models.load_model(models.OFFLINE_NAME, device="cpu", verbose=False)


def test_intact_cached_model_loads_good_before(fake_offline_entry):
    model, _ = models.load_model(models.OFFLINE_NAME, device="cpu", verbose=False)
    assert "offline" in model.quantedu_source


def test_unwritable_cache_is_a_model_error_naming_the_variable(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("QUANTEDU_CACHE", str(blocker / "cache"))  # under a file: fails for root too
    offline_gguf()
    with pytest.raises(models.ModelError, match="QUANTEDU_CACHE"):
        models.load_model(models.OFFLINE_NAME, device="cpu", verbose=False)
