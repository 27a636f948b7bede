"""The flow world's pretraining shortcut and its committed base model ``shapes-sd3``.

Pretraining feeds one zero T5 row with an attention-logit bias of ``log L`` instead of ``L`` zero rows
(pipeline/world/pretrain_flow.py): that must be the very function the saved model computes with diffusers'
own attention on ``L`` rows, or the model would be trained for one input and used on another.
"""
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("length", [1, 7, 256])
def test_one_biased_null_row_is_exactly_l_zero_rows(length):
    import torch

    from pipeline.world.pretrain_flow import FlowBuildSettings, NullTokenBias, build_transformer, null_row_bias

    torch.manual_seed(0)
    model = build_transformer(FlowBuildSettings(num_layers=2)).eval()
    b = 3
    x, clip, pooled = torch.randn(b, 4, 8, 8), torch.randn(b, 77, 32), torch.randn(b, 32)
    t = torch.tensor([10.0, 500.0, 990.0])
    with torch.no_grad():
        zeros = torch.zeros(b, length, 32)  # what SD3's pipeline feeds without T5
        full = model(hidden_states=x, timestep=t, encoder_hidden_states=torch.cat([clip, zeros], 1),
                     pooled_projections=pooled, return_dict=False)[0]
        model.set_attn_processor(NullTokenBias())
        short = torch.cat([clip, torch.zeros(b, 1, 32)], 1)
        biased = model(hidden_states=x, timestep=t, encoder_hidden_states=short, pooled_projections=pooled,
                       joint_attention_kwargs={"key_bias": null_row_bias([length] * b, 16, 78)}, return_dict=False)[0]
        unbiased = model(hidden_states=x, timestep=t, encoder_hidden_states=short, pooled_projections=pooled,
                         return_dict=False)[0]
    torch.testing.assert_close(biased, full, atol=1e-5, rtol=1e-5)
    if length > 1:  # the bias is what makes them equal: without it the outputs differ
        assert (unbiased - full).abs().max() > 1e-3


def test_draw_lengths_mixes_the_pipeline_default_with_shorter_and_longer():
    import torch

    from pipeline.world.pretrain_flow import DEFAULT_T5_TOKENS, draw_lengths

    lengths = draw_lengths(4000, 0.5, torch.Generator().manual_seed(0))
    share = (lengths == DEFAULT_T5_TOKENS).float().mean().item()
    assert 0.45 < share < 0.56 and lengths.min() >= 1 and lengths.max() <= 512
    assert (lengths < 16).any() and (lengths > 300).any()
