import json

import pytest

import neumeta_hf as nm
from neumeta_hf.targets import multiply_accumulates
from neumeta_hf.cli import main, parse_widths


def test_width_lists_and_ranges():
    assert parse_widths("40") == [40]
    assert parse_widths("16,24,32") == [16, 24, 32]
    assert parse_widths("16:64:16") == [16, 32, 48, 64]
    assert parse_widths("30:32") == [30, 31, 32]


@pytest.fixture(scope="module")
def saved_hyper(mlp_hyper, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hyper")
    mlp_hyper.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sample", "{hyper}", "--width", "3.5"], "invalid widths '3.5'"),
        (["sample", "{hyper}", "--width", "0,8"], "widths must be positive"),
        (["sample", "{hyper}"], "one of the arguments --width --max-parameters --max-macs is required"),
        (["sample", "{hyper}", "--width", "20", "--max-parameters", "9000"], "not allowed with argument --width"),
        (["sample", "{hyper}", "--max-parameters", "10"], "max_parameters=10: the smallest network of the trained"),
        (["sample", "{hyper}", "--max-macs", "10"], "max_macs=10: the smallest network of the trained range"),
        (["sample", "{hyper}", "--width", "20", "--num-samples", "0"], "--num-samples: must be an integer of at"),
        (["sample", "{missing}", "--width", "20"], "cannot load a hypernetwork from"),
        (["info"], "the following arguments are required: SOURCE"),
        (["sweep", "{hyper}", "--dataset", "digits", "--widths", "a:b"], "invalid widths 'a:b'"),
        # Round 2: 1:1000000000 hung before loading (a billion-entry list), 1:100000 started 100,000 networks.
        (["sample", "{hyper}", "--width", "1:1000000000"], "that is 1,000,000,000 widths, more than 1,000 in one"),
        (["sample", "{hyper}", "--width", "99999999999999999999"], "is beyond any network that could exist"),
        (["sample", "{hyper}", "--width", "1:100000"], "that is 100,000 widths, more than 1,000 in one command"),
        (["sweep", "{hyper}", "--dataset", "digits", "--widths", "1:100000"], "that is 100,000 widths"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_naming_the_problem(argv, message, saved_hyper, tmp_path, capsys):
    argv = [a.format(hyper=saved_hyper, missing=tmp_path / "nothing") for a in argv]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_sample_writes_one_loadable_directory_per_width(saved_hyper, tmp_path, capsys):
    from transformers import AutoModelForImageClassification

    assert main(["sample", str(saved_hyper), "--width", "20:24:4", "--output", str(tmp_path)]) == 0
    for width in (20, 24):
        network = AutoModelForImageClassification.from_pretrained(tmp_path / f"width-{width}", trust_remote_code=True)
        assert network.config.width == width
        assert (tmp_path / f"width-{width}" / "preprocessor_config.json").exists()
    assert "width 24:" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--max-parameters", "--max-macs"])
def test_sample_by_budget_picks_the_widest_that_fits(mlp_hyper, saved_hyper, tmp_path, capsys, flag):
    network = mlp_hyper.spec.skeleton(40)
    budget = network.num_parameters() if flag == "--max-parameters" else multiply_accumulates(network)
    main(["sample", str(saved_hyper), flag, str(budget), "--output", str(tmp_path)])
    assert f"{flag} {budget:,}: width 40 is the widest that fits" in capsys.readouterr().out
    assert [path.name for path in tmp_path.iterdir()] == ["width-40"]


def test_info_reports_sizes_and_ranges(saved_hyper, capsys):
    assert main(["info", str(saved_hyper)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["family"] == "neumeta-mlp" and facts["width_range"] == [16, 64]
    assert facts["full_network_parameters"] == 8970 and facts["inr_parameters"] > 0
    assert facts["smoothing"]["total_variation_after"] < facts["smoothing"]["total_variation_before"]
    assert facts["train_widths"] == "16..64 step 16 (4 widths)"


def test_info_of_a_llama_trained_on_every_width_is_short(tmp_path, capsys):
    """Issue 25: info printed 217 lines of raw JSON for a Llama (one line per trained width)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=256)  # fmt: skip
    hyper = nm.NeuMetaModel.from_base_model(LlamaForCausalLM(config), width_range=(64, 256), smooth=False, hidden_size=32,
                                            num_layers=1)  # fmt: skip
    hyper.save_pretrained(tmp_path)
    main(["info", str(tmp_path)])
    output = capsys.readouterr().out
    assert json.loads(output)["train_widths"] == "64..256 (193 widths)" and len(output.splitlines()) < 40


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"neumeta-hf {nm.__version__}"


def test_sweep_on_digits_writes_reports(saved_hyper, tmp_path, capsys):
    assert main(["sweep", str(saved_hyper), "--dataset", "digits", "--widths", "16,17", "--output", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["width"] for r in result["results"]] == [16, 17]
    assert all(0 <= r["top5_accuracy"] <= 1 and r["accuracy"] <= r["top5_accuracy"] for r in result["results"])
    assert (tmp_path / "sweep.png").exists()
    # The reference line: the network the hypernetwork was built from, on the same test split.
    assert 0 < result["base"]["accuracy"] <= 1 and result["base"]["width"] == 64
    assert "base network (width 64): n/a" not in (tmp_path / "sweep.md").read_text()


def test_sweep_rejects_a_dataset_of_another_shape(saved_hyper, tmp_path, capsys):
    import numpy as np
    from conftest import write_idx_dataset

    write_idx_dataset(tmp_path, np.zeros((4, 28, 28), dtype=np.uint8), np.arange(4, dtype=np.uint8))
    with pytest.raises(SystemExit) as stop:
        main(["sweep", str(saved_hyper), "--dataset", str(tmp_path), "--output", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "has 1x28x28 images, the hypernetwork's networks take 1x8x8" in capsys.readouterr().err
