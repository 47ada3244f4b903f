"""Generation without gradients runs the INR on bounded chunks of rows (`modeling_neumeta.CHUNK_ROWS`), cut at
tensor boundaries and inside tensors: it must give what one batch gives."""

import pytest
import torch
from conftest import SMALL_INR, random_base

import neumeta_hf as nm
from neumeta_hf import modeling_neumeta as modeling

WIDTH = 20  # LeNet rows per tensor at width 20: 20, 20, 800, 40, 3200, 80, 800
CHUNK = 97  # cuts inside the large tensors, and the first chunk holds three tensors


def lenet_hypernetwork(shared_trunk: bool) -> nm.NeuMetaModel:
    base = random_base(nm.NeuMetaLeNetConfig())
    hyper = nm.NeuMetaModel.from_base_model(
        base, width_range=(8, 32), smooth=False, shared_trunk=shared_trunk, **SMALL_INR
    )
    # Every INR parameter random (untrained, the output layer and several biases are constant), so that rows
    # evaluated with another tensor's head, bias or context would show.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in hyper.inr.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator), alpha=0.1)
    return hyper


def record_chunks(hyper: nm.NeuMetaModel) -> list[tuple[int, tuple[int, ...]]]:
    """(first tensor, row counts) of every INR call from now on."""
    calls = []

    def hook(module, args, kwargs):
        calls.append((kwargs.get("first_tensor", 0), tuple(args[2])))

    hyper.inr.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.parametrize("shared_trunk", [False, True])
@pytest.mark.parametrize("num_samples", [1, 3])  # 3: two generations with coordinate jitter
def test_chunked_generation_equals_one_batch(monkeypatch, shared_trunk, num_samples):
    hyper = lenet_hypernetwork(shared_trunk)
    calls = record_chunks(hyper)

    def generate():
        return hyper.generate_weights(WIDTH, num_samples=num_samples, generator=torch.Generator().manual_seed(1))

    monkeypatch.setattr(modeling, "CHUNK_ROWS", 10**9)
    whole = generate()
    assert len(calls) == num_samples
    calls.clear()
    monkeypatch.setattr(modeling, "CHUNK_ROWS", CHUNK)
    chunked = generate()

    row_counts = hyper.spec.coordinates(WIDTH).row_counts
    per_sample = calls[: len(calls) // num_samples]
    assert all(sum(counts) <= CHUNK for _, counts in per_sample)
    assert max(len(counts) for _, counts in per_sample) >= 3  # across tensor boundaries
    assert sum(first == 4 for first, _ in per_sample) > 1  # tensor 4 (3200 rows) cut into many chunks
    # Together the chunks cover every tensor's rows exactly once, in order.
    covered = [0] * len(row_counts)
    for first, counts in per_sample:
        for offset, count in enumerate(counts):
            covered[first + offset] += count
    assert tuple(covered) == row_counts

    assert whole.keys() == chunked.keys()
    for name in whole:
        # Matrix products of other row counts may round differently in the last bit; nothing more.
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-5, atol=1e-6)


def test_training_generation_is_one_batch_and_matches(monkeypatch):
    """With gradients (training) the INR runs once on all rows, whatever the chunk size."""
    hyper = lenet_hypernetwork(shared_trunk=False)
    monkeypatch.setattr(modeling, "CHUNK_ROWS", CHUNK)
    calls = record_chunks(hyper)
    trained = hyper.generate(WIDTH, noise=1.0, generator=torch.Generator().manual_seed(2))
    assert len(calls) == 1 and all(tensor.requires_grad for tensor in trained.values())
    with torch.no_grad():
        inference = hyper.generate(WIDTH, noise=1.0, generator=torch.Generator().manual_seed(2))
    assert len(calls) > 1
    for name in trained:
        torch.testing.assert_close(inference[name], trained[name].detach(), rtol=1e-5, atol=1e-6)


def test_memory_estimate_of_chunked_generation_does_not_grow_with_activations(mlp_hyper):
    """Without gradients only one chunk's activations count: a large width costs about its outputs."""
    rows = mlp_hyper.spec.row_count(2000)
    chunked, work = mlp_hyper.generation_cost(2000, chunked=True)
    one_batch, same_work = mlp_hyper.generation_cost(2000, chunked=False)
    assert work == same_work and rows > modeling.CHUNK_ROWS
    assert chunked < one_batch / 2
    assert chunked > rows * 4 * 4  # still counts every row's outputs
