"""Bad recipes, bad data and faults in `training/`: each is refused early with an error naming the key or value
and the fix, nothing is overwritten or resumed by mistake, and resuming never runs code from a checkpoint."""

import json
import os
import pickle
import socket

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import DIGITS, REPO, quick_config, random_base, reset_accelerate_state, write_idx_dataset

import neumeta_hf as nm
from neumeta_hf.data import load_splits
from neumeta_hf.nested import NestedNetwork
from neumeta_hf.objective import Objective
from training import train as train_script
from training import train_base
from training.recipe import identity_hash, load_config, run_identity
from training.train_base import (
    LOCK_FILE,
    check_against_data,
    claim_output_dir,
    release_output_dir,
    replace_earlier_run,
)


@pytest.mark.parametrize(
    "override, message",
    [
        ("hypernetwork.config.hiden_size=128", "Unknown key hypernetwork.config.hiden_size. Did you mean "
         "hypernetwork.config.hidden_size"),
        ("base.family_config.widht=32", "Unknown key base.family_config.widht. Did you mean base.family_config.width"),
        ("hypernetwork.config.width_range=[8,16]", "hypernetwork.config.width_range cannot be set here: use "
         "hypernetwork.width_range"),
        ("base.family=neumeta-vgg", "Unknown family 'neumeta-vgg'; known families: neumeta-mlp"),
        ("training.max_steps=0", "training.max_steps must be a positive integer, got 0"),
        ("training.max_steps=-5", "training.max_steps must be a positive integer, got -5"),
        ("training.epochs=0", "training.epochs must be a positive number, got 0"),
        ("sweep.save_width=0", "sweep.save_width must be a positive integer, got 0"),
        ("sweep.num_samples=0", "sweep.num_samples must be a positive integer, got 0"),
        ("data.max_train_samples=0", "data.max_train_samples must be a positive integer, got 0"),
        ("training.batch_size=0", "training.batch_size must be a positive integer, got 0"),
        ("training.batch_size=-1", "training.batch_size must be a positive integer, got -1"),
        ("base.batch_size=0", "base.batch_size must be a positive integer, got 0"),
        ("training.checkpoint_every=0", "training.checkpoint_every must be a positive integer, got 0"),
        ("training.eval_every=0", "training.eval_every must be a positive integer, got 0"),
        ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps must be a positive"),
        ("training.learning_rate=0", "training.learning_rate must be a positive number, got 0"),
        ("training.l2_weight=.nan", "training.l2_weight must be a non-negative number, got nan"),
        ("training.mixup_alpha=-0.2", "training.mixup_alpha must be a non-negative number, got -0.2"),
        ("nested.label_weight=-1", "nested.label_weight must be a non-negative number, got -1"),
        ("data.image_std=[0]", "data.image_std must be positive (images are divided by it), got [0]"),
        ("data.image_mean=mean", "data.image_mean must be a list of numbers, one per image channel, got 'mean'"),
        ("data.name=''", "data.name must name a dataset"),
        ("training.scheduler=cosin", "training.scheduler must be one of cosine, multistep, constant, got 'cosin'"),
        ("training.mixed_precision=fp32", "training.mixed_precision must be one of no, bf16, fp16, got 'fp32'"),
        ("sweep.widths=[0,32]", "sweep.widths must be a non-empty list of positive integer widths, got [0, 32]"),
        ("training.eval_widths=[]", "training.eval_widths must be a non-empty list of positive integer widths"),
        ("hypernetwork.width_range=[8,16,32]", "hypernetwork.width_range must be [min, max] with min <= max"),
        ("hypernetwork.width_range=[a,b]", "hypernetwork.width_range must be a non-empty list of positive integer"),
        ("hypernetwork.width_range=[64,32]", "hypernetwork.width_range must be [min, max] with min <= max"),
    ],
)  # fmt: skip
def test_bad_recipe_values_are_refused_when_read(override, message):
    with pytest.raises(ValueError) as error:
        load_config(DIGITS, ["training.max_steps=120", override])
    assert message in str(error.value)


def test_a_label_weight_for_an_in_place_stage_is_refused():
    """In place, the full width learns the labels only: a label weight there would be silently ignored."""
    with pytest.raises(ValueError, match="nested.label_weight is for nested.teacher=base"):
        load_config(DIGITS, ["nested.teacher=inplace", "nested.label_weight=1"])


def test_mixed_layer_widths_are_refused_where_layers_are_coupled_or_no_random_width_is_drawn():
    """nested.mix_layers draws one width per layer: the families' channel groups are coupled, and with no random
    width there is no draw for it to replace."""
    with pytest.raises(ValueError, match="neumeta-mlp's channel groups are coupled: set it to false"):
        load_config(DIGITS, ["nested.enabled=true", "nested.mix_layers=true"])
    llama = str(REPO / "training" / "configs" / "shakespeare_llama.yaml")
    with pytest.raises(ValueError, match="it needs nested.random_widths of at least 1"):
        load_config(llama, ["nested.mix_layers=true", "nested.random_widths=0"])
    assert load_config(llama, ["nested.mix_layers=true"]).nested.mix_layers


@pytest.mark.parametrize("script", [train_script, train_base])
def test_a_bad_recipe_on_the_command_line_exits_2_with_the_message(script, capsys, tmp_path, fresh_accelerate_state):
    with pytest.raises(SystemExit) as stop:
        script.main(["--config", DIGITS, "training.max_steps=0"])
    assert stop.value.code == 2
    assert "error: training.max_steps must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--config", "no/such/recipe.yaml"])
    assert "No such file or directory: 'no/such/recipe.yaml'" in capsys.readouterr().err
    # One that only the data refuses (digits has 1,438 training images): the same, not a traceback.
    with pytest.raises(SystemExit) as stop:
        script.main(["--config", DIGITS, f"output_dir={tmp_path / 'run'}", "data.validation_size=2000"])
    assert stop.value.code == 2
    assert "error: data.validation_size must be between 1 and 1437" in capsys.readouterr().err


def _idx_data(directory, labels):
    images = np.random.default_rng(0).integers(0, 255, (len(labels), 28, 28), dtype=np.uint8)
    write_idx_dataset(directory, images, np.asarray(labels, dtype=np.uint8))
    return [f"data.name={directory}", f"data.cache_dir={directory / 'cache'}"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("labels", "has labels 0..12, but the network has num_labels=10 classes (labels 0..9)"),
        ("batch", "training.batch_size: one step takes 64 examples (over all processes and accumulation steps), "
         "more than the 50 training examples"),
        ("base_batch", "base.batch_size: one step takes 128 examples"),
        ("image_shape", "takes 1x8x8 images, but data"),
        ("train_widths", "train_widths [70] lie outside width_range [32, 64]"),
        ("teacher_labels", ("with 5 labels; the base is a 'neumeta-mlp' network with 10: it must be of the base's "
                            "family and predict the same labels")),
        ("nested_not_nested", "is not a nested stage's output (no width_affine.safetensors)"),
        ("nested_widths", "was trained at widths [32, 48] (and the full one); hypernetwork.train_widths asks for"),
        ("teacher_missing", "is not a saved NeuMetaMLPForImageClassification"),
    ],
)  # fmt: skip
def test_recipe_is_checked_against_the_data_before_anything_trains(case, message, tmp_path, fresh_accelerate_state):
    overrides = {
        "labels": lambda: _idx_data(tmp_path, [0, 1, 2, 12] * 20) + ["base.family=neumeta-lenet"],
        "batch": lambda: ["data.max_train_samples=50"],
        "base_batch": lambda: ["base.batch_size=128", "data.max_train_samples=100"],
        "image_shape": lambda: _idx_data(tmp_path, list(range(10)) * 8) + [f"base.pretrained={tmp_path / 'mlp'}"],
        "train_widths": lambda: ["hypernetwork.train_widths=[32,70]"],
        "teacher_labels": lambda: [f"training.teacher={tmp_path / 'five'}"],
        "teacher_missing": lambda: [f"training.teacher={tmp_path / 'missing'}"],
        "nested_not_nested": lambda: ["nested.enabled=true", "hypernetwork.smooth=false",
                                      f"nested.pretrained={tmp_path / 'mlp'}"],
        # The hypernetwork's scales and shifts start from the stage's table: one row per trained width.
        "nested_widths": lambda: ["nested.enabled=true", f"nested.pretrained={tmp_path / 'stage'}"],
    }[case]()
    NestedNetwork(random_base(nm.NeuMetaMLPConfig()), [32, 48]).save_pretrained(tmp_path / "stage")
    random_base(nm.NeuMetaMLPConfig(num_labels=5)).save_pretrained(tmp_path / "five")
    random_base(nm.NeuMetaMLPConfig()).save_pretrained(tmp_path / "mlp")
    # Datasets this small hold no validation split: the recipe's would be refused before the checks under test.
    config = quick_config(tmp_path / "run", "data.validation_size=0", *overrides)
    with pytest.raises(ValueError) as error:
        train_script.train(config)
    assert message in str(error.value)
    assert not (tmp_path / "run" / "base").exists()  # nothing trained


def test_fp16_on_cpu_is_warned_about(tmp_path, fresh_accelerate_state):
    config = quick_config(tmp_path, "training.mixed_precision=fp16")
    train, validation, test, info = load_splits(config.data)
    with pytest.warns(UserWarning, match="training.mixed_precision=fp16 on a CPU: use bf16"):
        check_against_data(config, train, validation, test, info, Accelerator())


def test_mixed_precision_follows_accelerate_unless_the_recipe_sets_it(tmp_path, monkeypatch, fresh_accelerate_state):
    """Unset in the recipe, training.mixed_precision is what accelerate's own settings say (here its
    environment variable, as `accelerate launch --mixed_precision bf16` sets it); a recipe value wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert train_script.set_up(quick_config(tmp_path / "a")).accelerator.mixed_precision == "bf16"
    reset_accelerate_state()
    run = train_script.set_up(quick_config(tmp_path / "b", 'training.mixed_precision="no"'))
    assert run.accelerator.mixed_precision == "no"


def test_an_earlier_run_is_never_overwritten_without_being_told(tmp_path, fresh_accelerate_state):
    (tmp_path / "hypernetwork").mkdir()
    (tmp_path / "hypernetwork" / "model.safetensors").write_text("the 12,000-step hypernetwork")
    (tmp_path / "sampled-width-48").mkdir()
    (tmp_path / "log.jsonl").write_text("{}\n")
    with pytest.raises(FileExistsError, match="already holds a run \\(log.jsonl, hypernetwork, sampled-width-48\\)"
                       ".*training.resume_from_checkpoint=latest.*overwrite_output_dir=true"):
        train_script.train(quick_config(tmp_path))
    assert (tmp_path / "hypernetwork" / "model.safetensors").read_text() == "the 12,000-step hypernetwork"

    accelerator = Accelerator()
    earlier = claim_output_dir(quick_config(tmp_path, "overwrite_output_dir=true"), accelerator, resuming=False)
    assert (tmp_path / "hypernetwork").exists()  # claiming deletes nothing: replace_earlier_run does, after the checks
    replace_earlier_run(earlier, accelerator)
    assert [path.name for path in tmp_path.iterdir()] == [LOCK_FILE]  # held by this process

    (tmp_path / "base").mkdir()  # the base network of train_base.py, reused by the next run: not an earlier run
    claim_output_dir(quick_config(tmp_path, f"base.pretrained={tmp_path / 'base'}"), accelerator, resuming=False)
    with pytest.raises(FileExistsError, match="already holds a run \\(base\\)"):
        claim_output_dir(quick_config(tmp_path), accelerator, resuming=False)
    (tmp_path / "base").rmdir()
    (tmp_path / "base").write_text("")
    with pytest.raises(NotADirectoryError, match="output_dir .*/base is a file"):
        claim_output_dir(quick_config(tmp_path / "base"), accelerator, resuming=False)


def _fake_checkpoint(directory, step, identity):
    directory.mkdir(parents=True)
    run = {"step": step, "recipe_hash": identity_hash(identity), "learning_rate": 2e-3, "recipe": identity}
    (directory / "run.json").write_text(json.dumps(run))


def test_latest_takes_the_newest_complete_checkpoint_of_this_recipe(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    ours = run_identity(quick_config(tmp_path))
    other = run_identity(quick_config(tmp_path, "training.max_steps=100000"))
    _fake_checkpoint(checkpoints / "step_60", 60, ours)
    _fake_checkpoint(checkpoints / "step_100000", 100000, other)  # a stale one from another run
    (checkpoints / "step_90").mkdir()  # written by accelerate, killed before run.json: incomplete
    _fake_checkpoint(checkpoints / ".partial-step_120", 120, ours)  # killed before the rename
    path, run = train_script.find_checkpoint("latest", checkpoints, ours)
    assert path == checkpoints / "step_60" and run["step"] == 60

    with pytest.raises(ValueError, match="step_100000 was written by another recipe \\(training.max_steps=100000 "
                       "there, 120 here\\)"):
        train_script.find_checkpoint(str(checkpoints / "step_100000"), checkpoints, ours)
    with pytest.raises(FileNotFoundError, match="step_90 is not a complete checkpoint"):
        train_script.find_checkpoint(str(checkpoints / "step_90"), checkpoints, ours)
    with pytest.raises(FileNotFoundError, match="step_7 does not exist"):
        train_script.find_checkpoint(str(checkpoints / "step_7"), checkpoints, ours)
    with pytest.raises(FileNotFoundError, match="No complete checkpoint of this recipe .*2 from other recipes"):
        train_script.find_checkpoint("latest", checkpoints, run_identity(quick_config(tmp_path, "seed=5")))


def test_a_checkpoint_that_lost_a_file_is_skipped_by_latest_and_refused_by_name(tmp_path):
    """Round 2: resuming when the newest checkpoint had lost a file picked it anyway and died inside accelerate.
    A checkpoint's run.json lists its files; `latest` falls back to the previous complete one, saying so."""
    checkpoints = tmp_path / "checkpoints"
    ours = run_identity(quick_config(tmp_path))
    for step in (30, 60):
        _fake_checkpoint(checkpoints / f"step_{step}", step, ours)
        (checkpoints / f"step_{step}" / "model.safetensors").write_bytes(b"x" * 100)
        run = json.loads((checkpoints / f"step_{step}" / "run.json").read_text())
        (checkpoints / f"step_{step}" / "run.json").write_text(json.dumps({**run, "files": {"model.safetensors": 100}}))
    (checkpoints / "step_60" / "model.safetensors").write_bytes(b"x" * 40)  # cut short
    with pytest.warns(UserWarning, match="step_60 has lost model.safetensors \\(missing or cut short\\)"):
        path, run = train_script.find_checkpoint("latest", checkpoints, ours)
    assert path == checkpoints / "step_30"
    with pytest.raises(FileNotFoundError, match="step_60 has lost model.safetensors .*name an earlier checkpoint"):
        train_script.find_checkpoint(str(checkpoints / "step_60"), checkpoints, ours)
    (checkpoints / "step_30" / "model.safetensors").unlink()
    with pytest.warns(UserWarning, match="step_30 has lost"), pytest.raises(FileNotFoundError, match="No complete "
                                                                                "checkpoint of this recipe"):  # fmt: skip
        train_script.find_checkpoint("latest", checkpoints, ours)


class _Payload:
    """Unpickling this creates a file: proof that a checkpoint ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.slow
def test_non_finite_loss_names_a_good_checkpoint_and_a_lower_rate_resumes(tmp_path, monkeypatch,
                                                                          fresh_accelerate_state):
    steps = ["training.max_steps=80", "training.checkpoint_every=30", "training.eval_every=80"]
    real_step_loss = Objective.step_loss
    calls = []

    def diverging_at_step_60(*args, **kwargs):  # one call per step
        loss, terms = real_step_loss(*args, **kwargs)
        calls.append(None)
        return (loss * float("nan") if len(calls) == 61 else loss), terms

    monkeypatch.setattr(Objective, "step_loss", diverging_at_step_60)
    with pytest.raises(FloatingPointError, match="Loss became nan at step 60 .*stopping: the newest checkpoint with "
                       "a finite loss is .*step_30\\. Lower training.learning_rate \\(a resumed run applies"):
        train_script.train(quick_config(tmp_path, *steps))
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["non-finite-loss-step_60", "step_30"]
    saved = sorted(p.name for p in (checkpoints / "step_30").iterdir())
    assert "ema.safetensors" in saved and "run.json" in saved and not any("custom" in name for name in saved)

    # Plant code where the old EMA checkpointing and accelerate's RNG state look for pickles: neither may run it.
    monkeypatch.setattr(Objective, "step_loss", real_step_loss)
    marker = tmp_path / "payload-ran"
    resumed = quick_config(tmp_path, *steps, "training.learning_rate=1e-3", "training.resume_from_checkpoint=latest")
    planted = checkpoints / "step_30" / "custom_checkpoint_0.pkl"
    planted.write_bytes(pickle.dumps(_Payload(marker)))
    reset_accelerate_state()
    with pytest.raises(RuntimeError, match="Number of custom checkpoints in folder .*step_30 does not match"):
        train_script.train(resumed)  # accelerate refuses the unexpected file without loading it
    assert not marker.exists()
    planted.unlink()
    random_states = checkpoints / "step_30" / "random_states_0.pkl"
    random_states.write_bytes(pickle.dumps(_Payload(marker)))
    listed = json.loads((checkpoints / "step_30" / "run.json").read_text())
    listed["files"][random_states.name] = random_states.stat().st_size  # planted with run.json's list to match
    (checkpoints / "step_30" / "run.json").write_text(json.dumps(listed))
    reset_accelerate_state()
    printed = []
    monkeypatch.setattr(Accelerator, "print", lambda self, *a, **k: printed.append(" ".join(map(str, a))))
    train_script.train(resumed)
    assert not marker.exists()  # loaded with weights_only=True: refused
    assert any(f"Resumed from {checkpoints / 'step_30'} at step 30" in line for line in printed)
    assert any("training.learning_rate is 0.001 (the checkpoint's run had 0.002)" in line for line in printed)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    rates = {r["step"]: r["lr"] for r in records if "lr" in r}  # the resumed run's steps overwrite the first's
    assert rates[31] < 1e-3 and rates[60] < 1e-3 and torch.isfinite(torch.tensor(list(rates.values()))).all()


@pytest.mark.slow
def test_a_diverging_base_network_is_stopped_with_its_own_message(tmp_path, fresh_accelerate_state):
    with pytest.raises(FloatingPointError, match="Base network training: the loss became .* in epoch 0; lower "
                       "base.learning_rate \\(now 1e\\+30\\)"):
        train_script.train(quick_config(tmp_path, "base.learning_rate=1e30", "base.epochs=1"))


def test_a_base_network_with_non_finite_weights_is_refused(tmp_path, fresh_accelerate_state):
    base = random_base(nm.NeuMetaMLPConfig())
    with torch.no_grad():
        base.fc1.weight[0, 0] = float("nan")
    base.save_pretrained(tmp_path / "base")
    with pytest.raises(ValueError, match="holds non-finite values in fc1.weight: it diverged or is damaged"):
        train_script.train(quick_config(tmp_path / "run", f"base.pretrained={tmp_path / 'base'}"))


def test_overwrite_deletes_nothing_until_every_check_has_passed(tmp_path, fresh_accelerate_state):
    """Round 2: `overwrite_output_dir=true` with a dataset that does not load deleted the finished run first."""
    run = tmp_path / "run"
    (run / "hypernetwork").mkdir(parents=True)
    (run / "hypernetwork" / "model.safetensors").write_text("the finished hypernetwork")
    (run / "log.jsonl").write_text("{}\n")
    broken = {
        f"data.name={tmp_path / 'no-such-dataset'}": "no-such-dataset",  # not reachable
        # Outside the width range: found against the data's network.
        "hypernetwork.train_widths=[32,70]": r"train_widths \[70\] lie outside width_range \[32, 64\]",
    }
    for override, message in broken.items():
        with pytest.raises((ValueError, FileNotFoundError, OSError), match=message):
            train_script.train(quick_config(run, "overwrite_output_dir=true", override))
        assert (run / "hypernetwork" / "model.safetensors").read_text() == "the finished hypernetwork"
        assert (run / "log.jsonl").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("overwrite_output_dir='false'", "overwrite_output_dir must be true or false (unquoted), got 'false'"),
        ("hypernetwork.smooth='false'", "hypernetwork.smooth must be true or false (unquoted), got 'false'"),
        ("training.sandwich=1", "training.sandwich must be true or false (unquoted), got 1"),
        ("nested.enabled=yes please", "nested.enabled must be true or false (unquoted), got 'yes please'"),
        ("output_dir=", "output_dir must be a string, got None"),
        ("output_dir=12", "output_dir must be a string, got 12"),
        ("training.gamma=-0.1", "training.gamma must be a positive number, got -0.1"),
        ("seed=", "seed must be an integer from 0 to 2**32 - 1, got None"),
        ("seed=-1", "seed must be an integer from 0 to 2**32 - 1, got -1"),
        ("seed=18446744073709551617", "seed must be an integer from 0 to 2**32 - 1, got 18446744073709551617"),
        ("seed=one", "seed must be a number, got 'one'"),
        ("training.max_steps='120.7'", "training.max_steps must be a whole number, got '120.7'"),  # was cut to 120
        ("training.milestones=[-0.5]", "training.milestones must be a list of fractions of training between 0 and 1"),
        ("base.milestones=0.5", "base.milestones must be a list of fractions of training between 0 and 1, got 0.5"),
        ("hypernetwork.train_widths=[]", "hypernetwork.train_widths must be a non-empty list"),
        ("output_dir=''", "output_dir must name a directory, got an empty string"),
        ("training.mixed_precision=no", "training.mixed_precision must be a string, got False (YAML reads unquoted "
         "yes/no/on/off as booleans: quote it)"),
        ("hypernetwork.morph=3", "hypernetwork.morph must be a string, got 3"),
        # Round 2: num_samples 1e9 gave an ETA of 140,000 hours.
        ("hypernetwork.config.num_samples=1e9", "hypernetwork.config.num_samples: num_samples must be an integer"),
        ("sweep.num_samples=100000", "sweep.num_samples: num_samples=100,000 would average 100,000 generations"),
    ],
)  # fmt: skip
def test_booleans_strings_and_schedules_are_checked(override, message):
    """Round 2: a quoted "false" is a non-empty string, which Python takes as true: it deleted a finished run."""
    with pytest.raises(ValueError) as error:
        load_config(DIGITS, ["training.max_steps=120", override])
    assert message in str(error.value)


def test_a_run_holds_its_output_directory(tmp_path, fresh_accelerate_state):
    """Round 2: two runs started together into one directory both 'succeeded' with each other's files."""
    import subprocess
    import sys

    accelerator = Accelerator()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "started": "2026-12-03 10:00:00"}
        (tmp_path / LOCK_FILE).write_text(json.dumps(lock))
        with pytest.raises(RuntimeError, match=f"in use by another run \\(pid {holder.pid} on host"):
            claim_output_dir(quick_config(tmp_path), accelerator, resuming=False)
        with pytest.raises(RuntimeError, match="in use by another run"):
            train_script.train(quick_config(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=f"taking over .* from pid {holder.pid}, which is no longer running"):
        claim_output_dir(quick_config(tmp_path), accelerator, resuming=False)
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    release_output_dir(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_run_inside_another_runs_checkpoints_is_refused(tmp_path, fresh_accelerate_state):
    """Round 2: output_dir=RUN/checkpoints/x was accepted, and RUN's checkpoint pruning would delete it."""
    (tmp_path / "log.jsonl").write_text("")
    inside = tmp_path / "checkpoints" / "step-500" / "run"
    with pytest.raises(ValueError, match="lies inside .*checkpoints, which belongs to the run in"):
        claim_output_dir(quick_config(inside), Accelerator(), resuming=False)
    assert not inside.exists()
    claim_output_dir(quick_config(tmp_path / "beside"), Accelerator(), resuming=False)  # a sibling is fine
    release_output_dir(tmp_path / "beside")


@pytest.mark.parametrize(
    "text, message",
    [
        ("sweep:\n  widths: &a [1, 1]\nx: &b [*a, *a]\n", "aliases (*name, of an &name anchor) are not allowed"),
        ("seed: 1\nseed: 2\n", "key seed given twice in one mapping"),
        ("seed: !!python/object/apply:os.system ['true']\n", "(no tags that build Python objects: nothing in a recipe"),
        ("training:\n\tmax_steps: 5\n", "(indent with spaces, not tabs)"),
    ],
)  # fmt: skip
def test_recipe_is_plain_yaml(text, message, tmp_path):
    """Round 2: an alias bomb in sweep.widths ran for minutes, a duplicated key silently took the last value,
    a python tag and tab indentation gave tracebacks from inside yaml."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    with pytest.raises(ValueError) as error:
        load_config(recipe)
    assert f"{recipe} is not a plain YAML recipe" in str(error.value) and message in str(error.value)


def test_warm_up_longer_than_training_is_warned_about():
    with pytest.warns(UserWarning, match="training.warmup_steps \\(500\\) is more than training.max_steps \\(120\\)"):
        load_config(DIGITS, ["training.max_steps=120", "training.warmup_steps=500"])


@pytest.mark.slow
def test_of_runs_started_together_into_one_directory_exactly_one_holds_it(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, time, types\n"
        "from pathlib import Path\n"
        "from training.train_base import hold_output_dir\n"
        "main = types.SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None)\n"
        "try:\n"
        "    hold_output_dir(Path(sys.argv[1]), main)\n"
        "    print('held', flush=True)\n"
        "except RuntimeError:\n"
        "    print('refused', flush=True)\n"
        "time.sleep(3)  # alive while the others try\n"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=REPO) for _ in range(4)]  # fmt: skip
    outcomes = sorted(run.communicate(timeout=120)[0].strip() for run in runs)
    assert outcomes == ["held", "refused", "refused", "refused"]
