import torch

from quantedu import calibration


def test_block_by_block_reproduces_the_model(tiny_llama):
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))
    inputs, kwargs = calibration.capture_block_inputs(tiny_llama, ids)
    assert len(inputs) == 3 and inputs[0].shape == (1, 16, 64)
    hidden = inputs
    for block in calibration.decoder_layers(tiny_llama):
        hidden = calibration.run_block(block, hidden, kwargs)
    with torch.no_grad():
        ref = tiny_llama.model(ids).last_hidden_state
    ours = torch.cat([tiny_llama.model.norm(h) for h in hidden])
    assert torch.allclose(ours, ref, atol=1e-5)


def test_observe_linear_inputs_sees_every_projection(tiny_llama):
    seen = {}
    block = calibration.decoder_layers(tiny_llama)[0]
    with calibration.observe_linear_inputs(block, lambda n, x: seen.setdefault(n, x.shape)):
        tiny_llama(torch.randint(0, 256, (1, 8)))
    assert seen["self_attn.q_proj"] == (8, 64) and seen["mlp.down_proj"] == (8, 128)
    assert len(seen) == 7
    # hooks are removed afterwards
    seen.clear()
    tiny_llama(torch.randint(0, 256, (1, 8)))
    assert not seen


def test_sequential_inputs_choice(tiny_llama):
    """With quantized_inputs=True, block 1 sees block 0's *changed* output; with False, the original."""
    import copy

    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    for quantized_inputs in (True, False):
        model = copy.deepcopy(tiny_llama)
        reference_inputs, kwargs = calibration.capture_block_inputs(model, ids)
        block0_out = calibration.run_block(calibration.decoder_layers(model)[0], reference_inputs, kwargs)
        seen = []

        def process(index, block, inputs, kw):
            seen.append(inputs)
            with torch.no_grad():
                for p in block.parameters():
                    p.mul_(0.5)  # "quantize" = change the block

        calibration.sequential_blocks(model, ids, process, quantized_inputs=quantized_inputs)
        same = torch.allclose(seen[1][0], block0_out[0])
        assert same is (not quantized_inputs)
