from conftest import random_base
from huggingface_hub import ModelCard

import neumeta_hf as nm
from neumeta_hf.cli import describe
from neumeta_hf.publishing import hypernetwork_card, sampled_network_card


def test_sampled_network_card_has_metadata_and_model_index(mlp_hyper, tmp_path):
    network = mlp_hyper.sample_model(24)
    card = sampled_network_card(
        network, repo_id="someone/mlp-w24", hypernetwork="someone/neumeta-mlp", metrics={"accuracy": 0.91},
        dataset="digits",
    )
    card.save(tmp_path / "README.md")
    data = ModelCard.load(tmp_path / "README.md").data.to_dict()
    assert data["base_model"] == "someone/neumeta-mlp" and data["pipeline_tag"] == "image-classification"
    assert "neumeta" in data["tags"] and data["library_name"] == "transformers" and data["license"] == "mit"
    metrics = data["model-index"][0]["results"][0]["metrics"]
    assert metrics == [{"type": "accuracy", "value": 0.91}]
    text = card.text
    assert "width **24**" in text and f"{network.num_parameters():,} parameters" in text
    assert 'pipeline("image-classification", model="someone/mlp-w24", trust_remote_code=True)' in text


def test_sampled_network_card_without_results_has_no_model_index(mlp_hyper):
    card = sampled_network_card(mlp_hyper.sample_model(24))
    assert "model-index" not in card.data.to_dict() and "## Evaluation" not in card.text


def test_hypernetwork_card_shows_sizes_widths_and_sweep(mlp_hyper, monkeypatch):
    sweep = {
        "metric": "accuracy", "dataset": "digits", "split": "test", "num_samples": 1,
        "base": {"width": 64, "accuracy": 0.98},
        "results": [{"width": 17, "accuracy": 0.9, "seen_in_training": False, "num_parameters": 1000}],
    }  # fmt: skip
    card = hypernetwork_card(mlp_hyper, repo_id="someone/neumeta-mlp", sweep=sweep, sweep_plot="sweep.png")
    text = card.text
    inr_parameters = sum(p.numel() for p in mlp_hyper.inr.parameters())
    assert f"**{inr_parameters:,} parameters**, against 8,970" in text
    assert "| 17 | no | 1,000 | 0.9000 |" in text and "![accuracy against width](sweep.png)" in text
    assert 'NeuMetaModel.from_pretrained("someone/neumeta-mlp")' in text and "16–64" in text
    assert "Neural Metamorphosis" in text and "extrapolated" in text
    assert card.data.library_name == "neumeta-hf" and "pip install neumeta-hf" in text  # not loadable by transformers alone
    assert "neumeta" in card.data.to_dict()["tags"]
    assert "`sample_model` uses one noise-free generation" in text
    assert "table" not in text.split("## Sample")[0] and "The INR is" in text  # no nested stage, no table
    monkeypatch.setattr(mlp_hyper.config, "num_samples", 100)  # the fixture is shared: restored afterwards
    assert "`sample_model` averages 100 generations" in hypernetwork_card(mlp_hyper).text


def test_the_card_and_info_count_the_per_width_table_beside_the_inr(tmp_path):
    """A pipeline hypernetwork (width_affine) stores a row of scales and shifts per trained width besides its INR:
    its size counts toward what the artifact holds against the network it generates."""
    hyper = nm.NeuMetaModel.from_base_model(
        random_base(nm.NeuMetaLeNetConfig()), width_range=(8, 32), smooth=False, width_affine=True,
        train_widths=[8, 16, 24, 32], hidden_size=32, num_layers=1, num_frequencies=4,
    )  # fmt: skip
    # Each row: a log scale and a shift per channel of every scaling group, for the 3 widths below the full one.
    sizes = [table.shape[1] for table in hyper.width_affine_table.log_scale.values()]
    table = 2 * 3 * sum(sizes)
    facts = describe(hyper, str(tmp_path))  # no sweep there
    assert facts["width_table_parameters"] == table > 0 and facts["width_table_rows"] == 3
    text = hypernetwork_card(hyper).text
    assert f"plus a table of **{table:,}** per-width scales and shifts (3 widths)" in text
    assert "The INR and its table are" in text


def test_hypernetwork_card_names_the_hub_base_it_was_built_from(mlp_hyper):
    """Issue 25: no `base_model` named the base network although its id was known."""
    config = mlp_hyper.config.to_dict() | {"base_model": "someone/mlp-base"}
    hyper = type(mlp_hyper)(type(mlp_hyper.config).from_dict(config))
    assert hypernetwork_card(hyper).data.base_model == "someone/mlp-base"
    assert hypernetwork_card(mlp_hyper).data.base_model is None  # built from an object in memory


def test_the_licence_comes_from_the_base_networks_card(tmp_path):
    """Issue 25: `license: mit` was written on every card, also on weights derived from a base under another
    licence. Now the base's card's licence travels to the hypernetwork's card and every sampled network's; a base
    without one gets the stated default, and the recipe's `license` overrides both."""
    import neumeta_hf as nm
    from conftest import SMALL_INR, random_base

    base = random_base(nm.NeuMetaMLPConfig())
    base.save_pretrained(tmp_path / "base")
    ModelCard("---\nlicense: apache-2.0\n---\n# A base network\n").save(tmp_path / "base" / "README.md")
    hyper = nm.NeuMetaModel.from_base_model(str(tmp_path / "base"), width_range=(16, 64), **SMALL_INR)
    assert hyper.config.license == "apache-2.0"
    assert hypernetwork_card(hyper).data.license == "apache-2.0"
    hyper.save_pretrained(tmp_path / "hyper")
    network = nm.NeuMetaModel.from_pretrained(tmp_path / "hyper").sample_model(24)
    network.save_pretrained(tmp_path / "sampled")
    assert ModelCard.load(tmp_path / "sampled" / "README.md").data.license == "apache-2.0"

    assert nm.NeuMetaModel.from_base_model(base, width_range=(16, 64), **SMALL_INR).config.license is None
    assert sampled_network_card(network).data.license == "mit"  # the default, for a card given no licence
    chosen = nm.NeuMetaModel.from_base_model(str(tmp_path / "base"), width_range=(16, 64), license="cc-by-4.0", **SMALL_INR)
    assert hypernetwork_card(chosen).data.license == "cc-by-4.0"
