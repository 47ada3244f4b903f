"""Publishing through the Hub's HTTP protocol, against an in-process fake Hub (the real one is unreachable).

huggingface_hub reads HF_ENDPOINT when imported, so each Hub client runs in a subprocess pointed at the fake.
"""

import json
import time

import numpy as np
import pytest
import torch
from conftest import LOAD_WITHOUT_NEUMETA, card_metadata, inputs_for, run, save_as_trained, trained_like

import neumeta_hf as nm
from neumeta_hf.evaluation import sweep, write_sweep


@pytest.fixture
def trained_directory(mlp_hyper, tmp_path):
    """What training/train.py leaves: OUTPUT/hypernetwork beside sweep.json and sweep.png."""
    import datasets

    save_as_trained(mlp_hyper, tmp_path / "run" / "hypernetwork")
    inputs = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = datasets.Dataset.from_dict({"pixel_values": inputs.numpy(), "labels": [0, 1] * 4}).with_format("torch")
    write_sweep(sweep(mlp_hyper, data, widths=[16, 17], base_score=0.5, dataset_name="noise"), tmp_path / "run")
    return tmp_path / "run" / "hypernetwork"


@pytest.mark.slow
def test_push_hypernetwork_uploads_weights_card_and_sweep_in_one_commit(hub, trained_directory, tmp_path):
    result = run(["push", str(trained_directory), "me/neumeta-mlp"], hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.repo_files("me/neumeta-mlp")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "sweep.json", "sweep.png"]
    assert hub.commits("me/neumeta-mlp") == 1
    assert files["model.safetensors"] == (trained_directory / "model.safetensors").read_bytes()
    metadata = card_metadata(files["README.md"])
    assert "neumeta" in metadata["tags"] and metadata["pipeline_tag"] == "image-classification"
    text = files["README.md"].decode()
    assert "| 17 | no |" in text and "![accuracy against width](sweep.png)" in text
    assert 'NeuMetaModel.from_pretrained("me/neumeta-mlp")' in text


@pytest.mark.slow
def test_a_hypernetwork_beside_another_runs_sweep_is_pushed_without_its_figures(hub, trained_directory, tmp_path):
    """Reliability round 2: a hypernetwork copied beside another run's sweep.json was pushed with that run's
    table. The sweep names the weights it measured; push leaves out one that does not match, and says so."""
    other = trained_like(nm.NeuMetaModel.from_pretrained(trained_directory))
    torch.nn.init.normal_(other.inr.output_weight, generator=torch.Generator().manual_seed(1), std=0.1)
    other.save_pretrained(trained_directory)  # another run's weights where the sweep's were
    result = run(["push", str(trained_directory), "me/copied"], hub, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was measured on another hypernetwork" in result.stderr and "its figures are left out" in result.stderr
    files = hub.repo_files("me/copied")
    assert "sweep.json" not in files and "sweep.png" not in files
    assert "| 17 | no |" not in files["README.md"].decode()


@pytest.mark.slow
def test_pushed_sampled_network_loads_from_the_hub_without_neumeta_hf(hub, trained_directory, mlp_hyper, tmp_path):
    result = run(["sample", str(trained_directory), "--width", "27", "--output", str(tmp_path / "nets"),
                  "--push-to-hub", "me/mlp-w27"], hub, tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.repo_files("me/mlp-w27")
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_mlp.py",
                 "configuration_mlp.py", "modeling_common.py", "configuration_common.py", "image_processing_neumeta.py"):
        assert name in files, name
    assert hub.commits("me/mlp-w27") == 1
    assert "neumeta" in card_metadata(files["README.md"])["tags"]

    # A stranger with transformers alone: the pushed code, weights and image processor, read back over HTTP.
    directory = tmp_path / "stranger"
    directory.mkdir()
    network = mlp_hyper.sample_model(27)
    inputs = inputs_for(network.config)
    np.save(directory / "inputs.npy", inputs.numpy())
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), "L").save(directory / "digit.png")
    loader = LOAD_WITHOUT_NEUMETA.replace("directory = sys.argv[1]", "directory, repo = sys.argv[1], sys.argv[2]")
    loader = loader.replace("from_pretrained(directory,", "from_pretrained(repo,").replace("model=directory,", "model=repo,")
    result = run([str(directory), "me/mlp-w27"], hub, tmp_path, code=loader)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert not loaded["module"].startswith("neumeta_hf") and loaded["width"] == 27
    with torch.no_grad():
        torch.testing.assert_close(torch.tensor(loaded["logits"]), network(inputs).logits)
    assert any(r.startswith("GET /me/mlp-w27/resolve/") for r in hub.requests)


@pytest.mark.slow
def test_failed_upload_raises_and_leaves_local_files_alone(hub, trained_directory, tmp_path):
    hub.fail_commits = True
    before = {p.name: p.read_bytes() for p in trained_directory.iterdir()}
    result = run(["push", str(trained_directory), "me/neumeta-mlp"], hub, tmp_path)
    assert result.returncode != 0
    assert "error: upload to me/neumeta-mlp failed: " in result.stderr and "nothing local was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in trained_directory.iterdir()} == before
    assert hub.repo_files("me/neumeta-mlp") == {}


@pytest.mark.slow
def test_a_hub_that_stops_answering_fails_the_push_after_the_timeout(hub, trained_directory, tmp_path):
    """Round 2: a Hub that accepted the connection but never answered the commit kept push silent forever."""
    hub.stall_commits = 60
    started = time.time()
    result = run(["push", str(trained_directory), "me/neumeta-mlp"], hub, tmp_path, NEUMETA_HUB_TIMEOUT="0.5")
    assert result.returncode == 1 and time.time() - started < 55, result.stderr[-2000:]  # 6 tries, backing off
    assert "the Hub did not answer (0.5 s per request" in result.stderr and "NEUMETA_HUB_TIMEOUT" in result.stderr


PUSH_WITH_METRICS = """
import sys
import neumeta_hf as nm
from neumeta_hf.publishing import sampled_network_card

network = nm.NeuMetaModel.from_pretrained(sys.argv[1]).sample_model(30)
network.model_card = sampled_network_card(
    network, hypernetwork="me/neumeta-mlp", metrics={"accuracy": 0.875}, dataset="digits"
)
network.push_to_hub("me/mlp-w30")
"""


@pytest.mark.slow
def test_sampled_network_card_carries_model_index_to_the_hub(hub, trained_directory, tmp_path):
    result = run([str(trained_directory)], hub, tmp_path, code=PUSH_WITH_METRICS)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = card_metadata(hub.repo_files("me/mlp-w30")["README.md"])
    assert metadata["base_model"] == "me/neumeta-mlp"
    assert metadata["model-index"][0]["results"][0]["metrics"] == [{"type": "accuracy", "value": 0.875}]
