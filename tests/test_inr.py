import torch

from neumeta_hf.inr import NeuMetaINR


def make_inr(shared_trunk=False):
    torch.manual_seed(0)
    inr = NeuMetaINR((9, 1, 4), 16, 2, 3, 1, 0.1, shared_trunk)
    with torch.no_grad():
        for parameter in inr.parameters():
            parameter.normal_(0, 0.5)
    return inr


def per_head_reference(inr, positions, context, counts):
    """The same computation head by head, with plain matrix products and the context repeated on every row."""
    outputs = []
    for index, rows in enumerate(positions.split(counts)):
        head = 0 if inr.shared_trunk else index
        features = inr.position_features(rows)
        features = torch.nn.functional.pad(features, (0, inr.position_weight.shape[1] - features.shape[1]))
        context_features = inr.context_features(context[index]).expand(len(rows), -1)
        weight = torch.cat([inr.position_weight[head], inr.context_weight[head]])
        hidden = torch.relu(torch.cat([features, context_features], 1) @ weight + inr.input_bias[index])
        for layer in range(inr.hidden_weight.shape[0]):
            update = torch.relu(hidden @ inr.hidden_weight[layer, head] + inr.hidden_bias[layer, head])
            hidden = hidden + inr.residual_scale[layer, head] * update
        outputs.append(hidden @ inr.output_weight[head] + inr.output_bias[index])
    return torch.cat(outputs)


def test_grouped_heads_equal_head_by_head_evaluation():
    counts = (5, 3, 7)
    positions, context = torch.rand(15, 2), torch.rand(3, 3)
    for shared in (False, True):
        inr = make_inr(shared)
        expected = per_head_reference(inr, positions, context, counts)
        torch.testing.assert_close(inr(positions, context, counts), expected)
        with torch.no_grad():  # the in-place path
            torch.testing.assert_close(inr(positions, context, counts), expected)


def test_every_head_gets_gradients_from_one_backward():
    inr = make_inr()
    inr(torch.rand(15, 2), torch.rand(3, 3), (5, 3, 7)).sum().backward()  # .sum() gives the stride-0 gradient grouped_mm rejects
    assert inr.output_weight.grad.abs().sum(dim=(1, 2)).min() > 0


def test_autocast_runs_every_head_in_its_dtype():
    """Under bf16 autocast (Accelerate's mixed precision) the grouped products run in bf16, close to float32,
    and train: on CUDA a float32 weight against bf16 rows used to stop grouped_mm with a dtype error."""
    counts = (5, 3, 7)
    positions, context = torch.rand(15, 2), torch.rand(3, 3)
    for shared in (False, True):
        inr = make_inr(shared)
        expected = inr(positions, context, counts)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output = inr(positions, context, counts)
        assert output.dtype == torch.bfloat16
        torch.testing.assert_close(output.float(), expected, atol=0.1, rtol=0.05)
        output.float().sum().backward()
        assert inr.output_weight.grad.dtype == torch.float32 and inr.output_weight.grad.abs().sum() > 0
