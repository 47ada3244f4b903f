import json
import os
import socket
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from conftest import DIGITS, QUICK, REPO, quick_config, reset_accelerate_state, write_idx_dataset
from PIL import Image
from safetensors.torch import load_file

import neumeta_hf as nm
from neumeta_hf.data import DataConfig, load_splits, random_crop_and_flip
from neumeta_hf.targets import target
from training import train as train_script
from training.recipe import load_config


def test_config_overrides_and_unknown_keys():
    config = load_config(DIGITS, ["training.max_steps=7", "hypernetwork.config.hidden_size=32", "seed=3",
                                  "training.learning_rate=2e-3"])
    assert config.training.max_steps == 7 and config.seed == 3 and config.training.learning_rate == 0.002
    with pytest.raises(ValueError, match="training.learning_rate must be a number"):
        load_config(DIGITS, ["training.learning_rate=fast"])
    assert config.hypernetwork.config["hidden_size"] == 32 and config.data.name == "digits"
    with pytest.raises(ValueError, match="Unknown key\\(s\\) training.max_stepz; valid keys here: max_steps"):
        load_config(DIGITS, ["training.max_stepz=7"])
    with pytest.raises(ValueError, match="Unknown key\\(s\\) colour"):
        load_config(None, ["colour=blue"])
    with pytest.raises(ValueError, match="not of the form"):
        load_config(DIGITS, ["training.max_steps"])
    with pytest.raises(ValueError, match="training.mixup_alpha must be a non-negative number, got -0.2"):
        load_config(DIGITS, ["training.mixup_alpha=-0.2"])


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO / "training" / "configs").glob("*.yaml")))
def test_shipped_configs_parse_and_build_their_hypernetwork_config(name):
    config = load_config(REPO / "training" / "configs" / f"{name}.yaml")
    model_class = target(config.base.family).trainable_network_class()
    family_config = model_class.config_class(**config.base.family_config)
    hyper_config = nm.NeuMetaConfig(
        family=config.base.family,
        family_config={**family_config.to_dict(), "architectures": [model_class.__name__]},
        width_range=config.hypernetwork.width_range,
        train_widths=config.hypernetwork.train_widths,
        morph=config.hypernetwork.morph,
        **config.hypernetwork.config,
    )
    assert hyper_config.width_range[1] <= hyper_config.full_width


@pytest.mark.slow
def test_short_training_run_learns_and_writes_every_output(tmp_path, fresh_accelerate_state):
    result = train_script.train(quick_config(tmp_path))
    for name in ("sweep.json", "sweep.md", "sweep.png", "log.jsonl", "base/config.json",
                 "base/preprocessor_config.json", "hypernetwork/model.safetensors", "hypernetwork/README.md",
                 "hypernetwork/sweep.png", "sampled-width-48/config.json", "sampled-width-48/README.md",
                 "checkpoints/step_60", "checkpoints/step_120"):
        assert (tmp_path / name).exists(), name
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    losses = [r["task_loss"] for r in records if "task_loss" in r]
    assert len(losses) == 120 and np.mean(losses[-20:]) < np.mean(losses[:20])
    # Evaluation during training reads the recipe's validation split, never the test split.
    assert any("validation_accuracy/width_64" in r for r in records)
    assert not any("accuracy/width_64" in r for r in records)  # the test split's key
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert [r["width"] for r in saved["results"]] == [32, 33, 64]
    assert [r["seen_in_training"] for r in saved["results"]] == [True, False, True]
    accuracy = {r["width"]: r["accuracy"] for r in saved["results"]}
    assert min(accuracy.values()) > 0.3 and accuracy[64] > 0.8  # chance is 0.1
    hyper = nm.NeuMetaModel.from_pretrained(tmp_path / "hypernetwork")
    assert hyper.sample_model(40).config.width == 40


def test_train_base_reports_the_base_on_the_validation_split(tmp_path, capsys, fresh_accelerate_state):
    """train_base.py runs while a recipe is being chosen, so what it prints is what choices are made by: the
    validation split's score, the test split staying unread until a final table (it printed the test score)."""
    from neumeta_hf.evaluation import evaluate_score
    from training import train_base

    overrides = [f"output_dir={tmp_path}", "base.epochs=2", "nested.enabled=false"]
    train_base.main(["--config", str(DIGITS), *overrides])
    config = load_config(DIGITS, overrides)
    _, validation, test, _ = load_splits(config.data)
    base = nm.NeuMetaMLPForImageClassification.from_pretrained(tmp_path / "base")
    score, unread = evaluate_score(base, validation), evaluate_score(base, test)
    assert score != unread  # so that the line below tells the two splits apart
    assert f"width 64): validation accuracy {score:.4f}; saved to" in capsys.readouterr().out


def test_the_base_network_warms_its_learning_rate_up_and_clips_its_gradients(fresh_accelerate_state):
    """base.warmup_steps and base.max_grad_norm. Adam's first step moves the weights by about the learning rate; a
    warm-up divides that step by its length, and gradients clipped far below Adam's epsilon hardly move them."""
    from accelerate import Accelerator

    from training.recipe import BaseConfig
    from training.train_base import train_network

    train, _, _, info = load_splits(DataConfig("digits"))
    one_batch = train.select(range(64))

    def largest_step(**settings) -> float:
        torch.manual_seed(0)
        network = nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(**info.family_kwargs()))
        before = [p.detach().clone() for p in network.parameters()]
        settings = BaseConfig(epochs=1, batch_size=64, learning_rate=1e-2, weight_decay=0.0, **settings)
        trained = train_network(network, one_batch, settings, Accelerator(), seed=0)
        return max((p.detach() - b).abs().max().item() for p, b in zip(trained.parameters(), before))

    plain = largest_step()
    assert 0.9e-2 < plain < 1.01e-2
    assert largest_step(warmup_steps=100) == pytest.approx(plain / 100, rel=0.02)
    assert largest_step(max_grad_norm=1e-12) < plain / 100


@pytest.mark.slow
def test_stock_vit_trains_end_to_end_and_samples_stock_networks(tmp_path, fresh_accelerate_state):
    from transformers import AutoModelForImageClassification, ViTForImageClassification

    vit = ["base.family=vit", "base.family_config={patch_size: 4, hidden_size: 32, num_hidden_layers: 2, "
           "num_attention_heads: 2, intermediate_size: 64}", "base.epochs=15", "hypernetwork.width_range=[16,64]",
           "hypernetwork.train_widths=[16,32,48,64]", "sweep.widths=[16,40,64]", "sweep.save_width=40",
           "data.num_channels=3"]  # fmt: skip
    result = train_script.train(quick_config(tmp_path, *vit))
    accuracy = {r["width"]: r["accuracy"] for r in result["results"]}
    assert min(accuracy.values()) > 0.5  # chance is 0.1; 40 is unseen
    sampled = tmp_path / "sampled-width-40"
    assert not list(sampled.glob("*.py")) and (sampled / "preprocessor_config.json").exists()
    assert (tmp_path / "base" / "preprocessor_config.json").exists()
    network = AutoModelForImageClassification.from_pretrained(sampled)  # no trust_remote_code
    assert type(network) is ViTForImageClassification and network.config.intermediate_size == 40
    assert network.config.num_channels == 3 and len(set(network.config.image_mean)) == 1  # grey repeated


def test_a_pretrained_stock_base_is_fed_and_published_with_its_own_image_processor(tmp_path, fresh_accelerate_state):
    """Issue 25: with base.pretrained, training normalised with the data's own statistics and the sampled ViTs
    were saved with a processor at mean/std 0.5; both now follow the base's processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    labels = {i: str(i) for i in range(10)}
    base = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32,
                                               num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                               id2label=labels, label2id={v: k for k, v in labels.items()}))  # fmt: skip
    base.save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.25], image_std=[0.4]).save_pretrained(tmp_path / "vit")
    run = tmp_path / "run"
    train_script.train(quick_config(run, "base.family=vit", f"base.pretrained={tmp_path / 'vit'}", "training.max_steps=4",
                                    "training.warmup_steps=0", "hypernetwork.width_range=[8,32]", "hypernetwork.train_widths=[8,32]",
                                    "sweep.widths=[8,32]", "sweep.save_width=16"))  # fmt: skip
    for directory in ("base", "hypernetwork", "sampled-width-16"):
        processor = json.loads((run / directory / "preprocessor_config.json").read_text())
        assert (processor["image_mean"], processor["image_std"]) == ([0.25], [0.4]), directory
    assert nm.NeuMetaModel.from_pretrained(run / "hypernetwork").sample_model(12).config.image_mean == [0.25]


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, fresh_accelerate_state, monkeypatch):
    # Without the permutation both runs start from the same hypernetwork and must end on the same weights. The smallest
    # width is trained at every step as well (sandwich), which must resume just as exactly.
    deterministic = ["hypernetwork.smooth=false", "training.sandwich=true"]
    train_script.train(quick_config(tmp_path / "straight", *deterministic))
    reset_accelerate_state()
    uninterrupted = load_file(tmp_path / "straight" / "hypernetwork" / "model.safetensors")

    real_step_width = train_script.step_width

    def crash_after_checkpoint(config, widths, step):
        if step == 70:
            raise KeyboardInterrupt("simulated interruption")
        return real_step_width(config, widths, step)

    monkeypatch.setattr(train_script, "step_width", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_script.train(quick_config(tmp_path / "resumed", *deterministic))
    monkeypatch.setattr(train_script, "step_width", real_step_width)
    reset_accelerate_state()
    (checkpoint,) = (tmp_path / "resumed" / "checkpoints").glob("step_*")
    listed = json.loads((checkpoint / "run.json").read_text())["files"]  # what `latest` checks is still there
    assert {"model.safetensors", "optimizer.bin", "ema.safetensors"} <= set(listed) and not train_script.lost_files(
        checkpoint, {"files": listed})
    train_script.train(quick_config(tmp_path / "resumed", *deterministic, "training.resume_from_checkpoint=latest"))
    resumed = load_file(tmp_path / "resumed" / "hypernetwork" / "model.safetensors")
    records = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    smallest = [r for r in records if "smallest_width_loss" in r]
    assert len(smallest) == sum(1 for r in records if r.get("width", 32) != 32) > 90
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        assert torch.equal(resumed[name], uninterrupted[name]), name


def test_the_demo_recipe_run_twice_gives_bit_identical_stages_and_sweep(tmp_path):
    # `make demo` shortened, every stage kept (base, nested stage, hypernetwork with mixup and sampling averaged over
    # noisy generations), run twice as a user runs it -- two processes, on this machine's threads: the same
    # networks and the same figures. (Without deterministic kernels, two threads gave hypernetworks differing in
    # their last bits.)
    shortened = ["base.epochs=2", "nested.epochs=3", "training.max_steps=40", "training.warmup_steps=5",
                 "training.checkpoint_every=40", "training.eval_every=40", "hypernetwork.config.hidden_size=32",
                 "hypernetwork.config.num_samples=3", "sweep.widths=[32,33,64]"]  # fmt: skip
    for run in ("first", "second"):
        command = [sys.executable, str(REPO / "training" / "train.py"), "--config", DIGITS,
                   f"output_dir={tmp_path / run}", *shortened]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("base/model.safetensors", "nested/model.safetensors", "nested/width_affine.safetensors",
                  "hypernetwork/model.safetensors", "sampled-width-48/model.safetensors"):  # fmt: skip
        first, second = load_file(tmp_path / "first" / stage), load_file(tmp_path / "second" / stage)
        assert first.keys() == second.keys(), stage
        assert all(torch.equal(first[name], second[name]) for name in first), stage
    sweeps = [json.loads((tmp_path / run / "sweep.json").read_text())["results"] for run in ("first", "second")]
    assert sweeps[0] == sweeps[1]


def free_port() -> int:
    """A TCP port nothing listens on now (a fixed one may be held by another run on a shared machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_one_hypernetwork(tmp_path):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "--log_dir", str(tmp_path / "ranks"), "--tee", "3",
        str(REPO / "training" / "train.py"), "--config", DIGITS, f"output_dir={tmp_path / 'run'}", *QUICK,
        "training.max_steps=20",
        "training.checkpoint_every=20",
        "training.sandwich=true",  # two forwards through the DDP wrapper and one generation outside it per step
    ]  # fmt: skip
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    # The launcher's streams mix both ranks; each rank's own stderr (--tee into --log_dir) shows which failed, and why.
    ranks = sorted((tmp_path / "ranks").glob("**/stderr.log"))
    per_rank = "".join(f"\nrank {log.parent.name} stderr:\n{log.read_text()[-6000:]}" for log in ranks)
    assert result.returncode == 0, f"launcher stderr:\n{result.stderr[-3000:]}{per_rank}"
    assert len(ranks) == 2
    first = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert first["config"]["num_processes"] == 2
    hyper = nm.NeuMetaModel.from_pretrained(tmp_path / "run" / "hypernetwork")
    assert hyper.sample_model(33).fc2.weight.shape == (33, 33)


def test_hub_named_dataset_maps_its_columns(tmp_path, monkeypatch):
    """The code path for `uoft-cs/cifar10` (columns img/label), on a local stand-in of the same shape."""
    rng = np.random.default_rng(0)

    def split(n):
        images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
        return datasets.Dataset.from_dict({"img": images, "label": rng.integers(0, 3, n).tolist()}, features=features)

    stand_in = datasets.DatasetDict({"train": split(12), "test": split(4)})
    requested = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: requested.append(name) or stand_in)
    train, _, test, info = load_splits(DataConfig(name="uoft-cs/cifar10"))
    assert requested == ["uoft-cs/cifar10"]
    assert (info.num_channels, info.image_size, info.id2label, info.augment) == (3, 32, {0: "a", 1: "b", 2: "c"}, True)
    batch = train[:5]
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert test[:4]["labels"].tolist() == stand_in["test"]["label"]
    with pytest.raises(ValueError, match="no column\\(s\\) \\['fine_label'\\]; its columns are \\['img', 'label'\\]"):
        load_splits(DataConfig(name="uoft-cs/cifar100"))


def test_idx_directory_is_read_and_cached(tmp_path):
    images = np.arange(6 * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(6, 28, 28)
    write_idx_dataset(tmp_path, images, np.array([0, 1, 2, 3, 4, 5], dtype=np.uint8))
    config = DataConfig(name=str(tmp_path), cache_dir=str(tmp_path / "cache"), image_mean=[0.0], image_std=[1.0])
    train, _, test, info = load_splits(config)
    assert (info.num_channels, info.image_size, len(train), len(test)) == (1, 28, 6, 6)
    torch.testing.assert_close(train[:1]["pixel_values"][0, 0], torch.from_numpy(images[0]).float() / 255)
    assert (tmp_path / "cache").exists()


def test_without_cache_dir_the_cache_is_under_neumeta_hf_cache(tmp_path, monkeypatch):
    """$NEUMETA_HF_CACHE moves the default cache (the suite points it away from the user's ~/.cache)."""
    (tmp_path / "idx").mkdir()
    write_idx_dataset(tmp_path / "idx", np.zeros((6, 8, 8), dtype=np.uint8), np.arange(6, dtype=np.uint8))
    monkeypatch.setenv("NEUMETA_HF_CACHE", str(tmp_path / "elsewhere"))
    load_splits(DataConfig(name=str(tmp_path / "idx"), image_mean=[0.0], image_std=[1.0]))
    assert [path.name.split("-")[0] for path in (tmp_path / "elsewhere").iterdir()] == ["idx"]


def test_single_channel_images_repeat_to_three_channels_on_request():
    train, _, test, info = load_splits(DataConfig(name="digits", num_channels=3, max_train_samples=50))
    pixels = train[:4]["pixel_values"]
    assert info.num_channels == 3 and pixels.shape[1:] == (3, 8, 8) and len(info.image_mean) == 3
    torch.testing.assert_close(pixels[:, 0], pixels[:, 2])  # the grey image, repeated
    assert test[:2]["pixel_values"].shape[1] == 3
    with pytest.raises(ValueError, match="only single-channel images can be repeated"):
        load_splits(DataConfig(name="digits", num_channels=2))


def test_random_crop_and_flip_keeps_shapes_and_content():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = random_crop_and_flip(images, padding=2)
    assert out.shape == images.shape
    values = set(images.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values


def test_mixup_blends_each_image_and_its_label_by_the_same_weight():
    # Labels 0..7 are one-hot rows, so each target row holds the two blending weights and the blended image
    # must equal the target row applied to the batch's images.
    images = torch.randn(8, 1, 4, 4)
    labels = torch.arange(8)
    mixed, targets = train_script.mixup(images, labels, num_labels=8, alpha=0.4, seed=3)
    assert mixed.shape == images.shape and targets.shape == (8, 8)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    torch.testing.assert_close(mixed, torch.einsum("ij,jchw->ichw", targets, images))
    assert (targets.max(1).values < 1).any()  # some images really are blended
    again, _ = train_script.mixup(images, labels, num_labels=8, alpha=0.4, seed=3)
    other, _ = train_script.mixup(images, labels, num_labels=8, alpha=0.4, seed=4)
    assert torch.equal(again, mixed) and not torch.equal(other, mixed)


@pytest.mark.parametrize("script", ["train", "train_base"])
def test_a_pretrained_base_of_another_family_is_refused_before_any_output(script, tmp_path, capsys):
    """A Llama directory as base.pretrained of the default (neumeta-mlp) recipe: a clear error naming both
    families and the key to set, and no output directory left behind (it used to be a traceback from deep inside
    the config loader, and an empty directory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from training import train_base

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    llama.save_pretrained(tmp_path / "llama")
    run = tmp_path / "run"
    entry = {"train": train_script.main, "train_base": train_base.main}[script]
    with pytest.raises(SystemExit) as stop:
        entry(["--config", str(DIGITS), f"output_dir={run}", f"base.pretrained={tmp_path / 'llama'}"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert "is a 'llama' network, but base.family is 'neumeta-mlp': set base.family=llama" in error
    assert not run.exists()
