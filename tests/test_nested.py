"""The nested stage: importance ordering keeps the function, every width is a plain network with its own scale
and shift folded in, the stage round-trips through save/load and a short real run makes narrow widths work."""


import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call
from conftest import DIGITS, inputs_for, quick_config, random_base, reset_accelerate_state

import neumeta_hf as nm
from neumeta_hf.data import DataConfig, load_splits
from neumeta_hf.evaluation import evaluate_score
from neumeta_hf.nested import (
    AFFINE_FILE,
    NestedNetwork,
    WidthAffine,
    fold_scale_and_shift,
    importance_order,
    train_nested,
    trained_widths,
)
from neumeta_hf.pruning import first_channels, has_batch_norm, nested_weights
from training import train as train_script
from training.recipe import load_config

WIDTHS = [16, 24, 32, 48, 64]
# Families with BatchNorm: a base, the stage's trained widths, and its first site's BatchNorm and site name (on
# the ResNet, the stem's: the first of the residual stream's several writers, each a site of its own).
BATCH_NORM_STAGES = {
    "unet": (nm.NeuMetaUNetConfig(image_size=16, num_classes=3), [8, 16, 24], "enc1.conv1.norm", "enc1.hidden"),
    "resnet": (nm.NeuMetaResNetCifarConfig(depth=8, image_size=8), [16, 32, 48], "stem.norm", "stream0@stem.conv"),
}


@pytest.mark.parametrize("config", [nm.NeuMetaMLPConfig(), nm.NeuMetaLeNetConfig(), nm.NeuMetaVAEConfig()],
                         ids=lambda c: c.model_type)  # fmt: skip
def test_importance_order_keeps_the_function_and_sorts_every_group(config):
    base = random_base(config)
    ordered = importance_order(base)
    kind = nm.target(config.model_type)
    x = inputs_for(config).double()
    function = nm.targets.task_for(config).function_output
    torch.testing.assert_close(function(ordered.double()(x)), function(base.double()(x)), rtol=1e-9, atol=1e-9)
    state = dict(ordered.named_parameters())
    for group in kind.channel_groups(ordered):
        importance = sum(w.abs().flatten(1).sum(1) for w in kind.filters(ordered, group, state))
        assert torch.all(importance[:-1] >= importance[1:]), group.name
    moved = [name for name, tensor in base.state_dict().items() if not torch.equal(tensor, ordered.state_dict()[name])]
    assert moved  # random channels are not in order already


def test_each_width_is_its_first_channels_with_its_own_scale_and_shift_folded_in():
    base = importance_order(random_base(nm.NeuMetaMLPConfig()))
    nested = NestedNetwork(base, WIDTHS)
    x = inputs_for(base.config)
    # Zero affine: the full width is the network itself, a narrower one its first channels.
    torch.testing.assert_close(nested.network_at(64)(x).logits, base(x).logits)
    torch.testing.assert_close(nested.network_at(24)(x).logits, first_channels(base, 24)(x).logits)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for values in (*nested.affine.log_scale.values(), *nested.affine.shift.values()):
            values.normal_(0, 0.3, generator=generator)
    row = WIDTHS.index(24)
    scale, shift = nested.affine.log_scale["fc1"][row, :24].exp(), nested.affine.shift["fc1"][row, :24]
    expected = scale * torch.nn.functional.linear(x.flatten(1), base.fc1.weight[:24], base.fc1.bias[:24]) + shift
    network = nested.network_at(24)
    assert isinstance(network, nm.NeuMetaMLPForImageClassification) and network.config.width == 24
    torch.testing.assert_close(network.fc1(x.flatten(1)), expected.detach())
    # A width between two trained ones interpolates their values, channel by channel; the full width is the
    # shared network itself.
    low, high = nested.affine.values("fc2", 16, 16), nested.affine.values("fc2", 24, 16)
    middle = nested.affine.values("fc2", 20, 16)
    torch.testing.assert_close(middle[1], (low[1] + high[1]) / 2)
    torch.testing.assert_close(middle[0], (low[0].log() / 2 + high[0].log() / 2).exp())
    assert nested.affine.widths == [16, 24, 32, 48]
    torch.testing.assert_close(nested.network_at(64)(x).logits, base(x).logits)


def test_nested_network_round_trips_through_save_and_load(tmp_path):
    nested = NestedNetwork(importance_order(random_base(nm.NeuMetaLeNetConfig())), [8, 16, 32])
    with torch.no_grad():
        nested.affine.shift["conv2"].normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    nested.save_pretrained(tmp_path)
    loaded = NestedNetwork.from_pretrained(tmp_path)
    x = inputs_for(nested.network.config)
    assert loaded.affine.widths == [8, 16]  # the full width, 32, is the shared network itself
    for width in (8, 12, 32):
        torch.testing.assert_close(loaded.network_at(width)(x).logits, nested.network_at(width)(x).logits)


def test_short_nested_stage_makes_the_narrow_widths_work(fresh_accelerate_state):
    """Digits: a briefly trained base, then a short nested stage distilled from it: the narrowest width, cut
    from the warm start, gains and is far above chance (10 classes); the full width stays the base's."""
    train, _, test, info = load_splits(DataConfig(name="digits"))
    torch.manual_seed(0)
    base = nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(**info.family_kwargs()))
    optimizer = torch.optim.AdamW(base.parameters(), lr=3e-3)
    for _ in range(8):
        for batch in torch.utils.data.DataLoader(train, batch_size=64, shuffle=True):
            optimizer.zero_grad()
            base(batch["pixel_values"], labels=batch["labels"]).loss.backward()
            optimizer.step()
    base.eval()
    nested = NestedNetwork(importance_order(base), [16, 32, 48, 64])
    before = evaluate_score(nested.network_at(16), test)
    losses = train_nested(nested, base, train, epochs=3, batch_size=64, learning_rate=5e-3, seed=0)
    after = evaluate_score(nested.network_at(16), test)
    assert len(losses) == 3 * (len(train) // 64)
    assert after > max(before + 0.1, 0.6), (before, after)
    assert evaluate_score(nested.network_at(64), test) > evaluate_score(base, test) - 0.03


def test_in_place_nested_stage_from_scratch_learns_the_labels_at_every_width():
    """No teacher and no warm start (nested.teacher=inplace, nested.warm_start=false): the full width learns the
    labels, the narrower widths its predictions of the same step; three epochs on digits make every width work."""
    train, _, test, info = load_splits(DataConfig(name="digits"))
    torch.manual_seed(0)
    fresh = nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(**info.family_kwargs()))
    nested = NestedNetwork(fresh, [16, 32, 48, 64])
    assert evaluate_score(nested.network_at(16), test) < 0.3  # untrained
    train_nested(nested, None, train, epochs=3, batch_size=64, learning_rate=5e-3, seed=0)
    scores = [evaluate_score(nested.network_at(w), test) for w in (16, 40, 64)]
    assert min(scores) > 0.7, scores  # 10 classes


def test_with_a_label_weight_the_full_width_learns_beyond_its_teacher_and_the_others_follow_it():
    """nested.label_weight: the full width learns the labels beside the distillation, so it can end far better
    than a base short of convergence (here four steps, 40 % on digits); without it, it stays at the base's level.
    The narrower widths follow the teacher either way."""
    train, _, test, info = load_splits(DataConfig(name="digits"))
    torch.manual_seed(0)
    base = nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(**info.family_kwargs()))
    optimizer = torch.optim.AdamW(base.parameters(), lr=3e-3)
    for _, batch in zip(range(4), torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)):
        optimizer.zero_grad()
        base(batch["pixel_values"], labels=batch["labels"]).loss.backward()
        optimizer.step()
    teacher = evaluate_score(base.eval(), test)
    scores = {}
    for label_weight in (0.0, 1.0):
        nested = NestedNetwork(importance_order(base), [16, 32, 48, 64])
        # The teacher is `base` itself, from which the next stage is cut: it must stay trainable.
        train_nested(nested, base, train, epochs=2, batch_size=64, learning_rate=5e-3, seed=0,
                     label_weight=label_weight)  # fmt: skip
        scores[label_weight] = [evaluate_score(nested.network_at(w), test) for w in (16, 64)]
    assert teacher < 0.5 and abs(scores[0.0][1] - teacher) < 0.05, (teacher, scores)  # measured 0.40, 0.41
    assert scores[1.0][1] > teacher + 0.3 and scores[1.0][0] < 0.5, (teacher, scores)  # measured 0.89, 0.26
    with pytest.raises(ValueError, match="label_weight is for a stage with a teacher"):
        train_nested(nested, None, train, epochs=1, batch_size=64, learning_rate=5e-3, label_weight=1.0)


def test_drawing_every_width_of_the_range_trains_the_widths_between_the_trained_ones():
    """nested.every_width (US-Nets' sampling): a stage with only widths 8 and 64 in its table also trains 9-63 (on
    their interpolated scales and shifts), so that the widths between work; drawn from the table alone they do not."""
    train, _, test, info = load_splits(DataConfig(name="digits"))
    scores = {}
    for every_width in (False, True):
        torch.manual_seed(0)
        fresh = nm.NeuMetaMLPForImageClassification(nm.NeuMetaMLPConfig(**info.family_kwargs()))
        nested = NestedNetwork(fresh, [8, 64])
        train_nested(nested, None, train, epochs=3, batch_size=64, learning_rate=5e-3, seed=0, every_width=every_width)
        scores[every_width] = [evaluate_score(nested.network_at(w), test) for w in (20, 40)]
    assert min(scores[True]) > 0.7 and max(scores[False]) < 0.6, scores  # measured: 0.74, 0.88 against 0.35, 0.49


def test_recipe_defaults_follow_the_method_and_refuse_what_breaks_the_nesting():
    """nested.enabled switches the method: the nested pipeline keeps channels in order, anchors on the first ones
    and generates per-width scales and shifts; the plain method permutes. Settings that break either are refused,
    e.g. training only the generated scales and shifts of a pipeline that has none."""
    pipeline, plain = load_config(DIGITS), load_config(DIGITS, ["nested.enabled=false"])
    assert pipeline.nested.enabled and not pipeline.hypernetwork.smooth
    assert (
        pipeline.hypernetwork.config == {"anchor_channels": "first", "width_affine": True} | plain.hypernetwork.config
    )
    assert plain.hypernetwork.smooth and "width_affine" not in plain.hypernetwork.config
    for extra in (["hypernetwork.smooth=true"], ["hypernetwork.config.anchor_channels=resampled"]):
        with pytest.raises(ValueError, match="nested.enabled: width w is the first w channels"):
            load_config(DIGITS, extra)
    with pytest.raises(ValueError, match="width_affine corrects the nested stage's per-width scales"):
        load_config(DIGITS, ["nested.enabled=false", "hypernetwork.config.width_affine=true"])
    with pytest.raises(ValueError, match="training.train_corrections=false trains only the generated per-width"):
        load_config(DIGITS, ["hypernetwork.config.width_affine=false", "training.train_corrections=false"])


@pytest.mark.slow
def test_pipeline_with_nested_stage_then_resume_reuses_it(tmp_path, fresh_accelerate_state):
    """train.py with the nested stage: base, nested stage (saved, and loading as a plain network), hypernetwork
    anchored on its first channels, unpermuted; a resumed run starts from the nested stage it saved."""
    overrides = ["nested.enabled=true", "nested.epochs=2", "hypernetwork.smooth=false", "training.max_steps=60",
                 "hypernetwork.config.width_affine=true"]
    result = train_script.train(quick_config(tmp_path, *overrides))
    nested = NestedNetwork.from_pretrained(tmp_path / "nested")
    hyper = nm.NeuMetaModel.from_pretrained(tmp_path / "hypernetwork")
    assert nested.affine.widths == [w for w in hyper.config.train_widths if w != 64]  # the recipe's, less the full
    assert hyper.config.anchor_channels == "first" and not hyper.config.smoothing and hyper.config.width_affine
    # The untrained INR correction starts at zero, so the hypernetwork starts where the nested stage's shared
    # weights are; after training, the narrowest width is far above chance.
    accuracy = {r["width"]: r["accuracy"] for r in result["results"]}
    assert accuracy[32] > 0.5, accuracy
    reset_accelerate_state()
    before = (tmp_path / "nested" / AFFINE_FILE).stat().st_mtime_ns
    resumed = train_script.train(quick_config(tmp_path, *overrides, "training.resume_from_checkpoint=latest"))
    assert (tmp_path / "nested" / AFFINE_FILE).stat().st_mtime_ns == before  # loaded, not trained again
    assert resumed["results"] == result["results"]


def test_training_only_the_generated_scales_and_shifts_leaves_the_weight_corrections_at_zero(
    tmp_path, fresh_accelerate_state
):
    """training.train_corrections=false: every width is the nested network with its own scales and shifts, their
    generated corrections trained by distillation; the INR's weight corrections stay zero, so the full width is
    the stage's."""
    overrides = ["nested.enabled=true", "nested.epochs=2", "training.max_steps=30", "training.train_corrections=false"]
    result = train_script.train(quick_config(tmp_path, *overrides))
    hyper = nm.NeuMetaModel.from_pretrained(tmp_path / "hypernetwork")
    assert not hyper.inr.output_weight.any() and not hyper.inr.output_bias.any()
    assert hyper.inr.width_affine.output_weight.any()
    nested = NestedNetwork.from_pretrained(tmp_path / "nested")
    x = inputs_for(nested.network.config)
    with torch.no_grad():
        torch.testing.assert_close(hyper.sample_model(64)(x).logits, nested.network(x).logits)
        assert not torch.allclose(hyper.sample_model(40)(x).logits, nested.network_at(40)(x).logits)
    assert min(r["accuracy"] for r in result["results"]) > 0.5


def test_per_width_scales_and_shifts_start_at_the_nested_table_and_vanish_at_full_width(tmp_path):
    """The hypernetwork's per-width scale and shift: nothing at the full width (the nested network itself), the
    nested stage's table at its trained widths once adopted, and at a width between them its neighbours'
    interpolated -- the values of the smooth rule the table was drawn from; a generated correction moves them;
    saved and loaded with the hypernetwork."""
    torch.manual_seed(0)  # the INR's initialisation
    nested = NestedNetwork(importance_order(random_base(nm.NeuMetaLeNetConfig())), [8, 16, 24, 32])

    full_sizes = {key: table.shape[1] for key, table in nested.affine.log_scale.items()}

    def rule(group, width, size):  # smooth in channel and width, as a trained table is; nothing at full width
        channels, taper = torch.arange(size) / full_sizes[group.replace(".", "_")], (32 - width) / 24
        return (0.3 * taper * torch.cos(3 * channels)).exp(), 0.2 * taper * torch.sin(2 * channels)

    with torch.no_grad():
        for key in nested.affine.log_scale:
            for row, width in enumerate(nested.affine.widths):
                size = nested.affine.log_scale[key].shape[1]
                scale, shift = rule(key, width, size)
                nested.affine.log_scale[key][row], nested.affine.shift[key][row] = scale.log(), shift
    hyper = nm.NeuMetaModel.from_base_model(
        nested.network, width_range=(8, 32), smooth=False, anchor_channels="first", width_affine=True,
        train_widths=[8, 16, 24, 32], hidden_size=32, num_layers=1, num_frequencies=4, size_frequencies=2,
    )  # fmt: skip
    x = inputs_for(nested.network.config)

    @torch.no_grad()
    def gap(width):  # the sampled network's logits against the rule's, relative to their size
        skeleton = nested.skeleton(width)
        tensors = fold_scale_and_shift(skeleton, nested_weights(nested.network, skeleton),
                                       lambda group, size: rule(group, width, size))  # fmt: skip
        expected = functional_call(skeleton, tensors, (x,)).logits
        return float((hyper.sample_model(width)(x).logits - expected).abs().max() / expected.abs().max())

    assert gap(32) == 0  # the full width is the nested network, untouched
    assert gap(8) > 0.05  # no table yet: no scale and shift, so not the rule's
    hyper.adopt_width_affine(nested)
    assert gap(8) < 1e-5 and gap(16) < 1e-5, (gap(8), gap(16))
    with torch.no_grad():  # between them, the nested stage's own interpolation
        torch.testing.assert_close(hyper.sample_model(12)(x).logits, nested.network_at(12)(x).logits)
    with torch.no_grad():
        hyper.inr.width_affine.output_bias.fill_(0.1)  # a correction, as training makes: every width but the full
    assert gap(8) > 0.05 and gap(12) > 0.05 and gap(32) == 0
    hyper.save_pretrained(tmp_path)
    loaded = nm.NeuMetaModel.from_pretrained(tmp_path)
    assert loaded.config.width_affine
    torch.testing.assert_close(loaded.sample_model(12)(x).logits, hyper.sample_model(12)(x).logits)
    assert not any(p.requires_grad for p in loaded.width_affine_table.parameters())  # the stage's, never trained
    mismatch = r"trained at widths \[8, 16\], the hypernetwork's train_widths are \[8, 16, 24\]"
    with pytest.raises(ValueError, match=mismatch):
        loaded.adopt_width_affine(NestedNetwork(nested.network, [8, 16, 32]))


def test_a_hypernetwork_saved_before_it_kept_the_table_loads_with_its_scales_and_shifts_as_generated(tmp_path):
    """Earlier hypernetworks generated the whole per-width scales and shifts: loaded without a table (its keys
    missing, nothing else), they are an identity table plus the same generated values."""
    torch.manual_seed(0)
    nested = NestedNetwork(importance_order(random_base(nm.NeuMetaLeNetConfig())), [8, 16, 24, 32])
    hyper = nm.NeuMetaModel.from_base_model(
        nested.network, width_range=(8, 32), smooth=False, anchor_channels="first", width_affine=True,
        train_widths=[8, 16, 24, 32], hidden_size=32, num_layers=1,
    )  # fmt: skip
    with torch.no_grad():
        hyper.inr.width_affine.output_bias.fill_(0.1)
    hyper.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    stored = load_file(weights)
    save_file({k: v for k, v in stored.items() if not k.startswith("width_affine_table.")}, weights,
              metadata={"format": "pt"})  # fmt: skip
    loaded = nm.NeuMetaModel.from_pretrained(tmp_path)
    x = inputs_for(nested.network.config)
    with torch.no_grad():
        torch.testing.assert_close(loaded.sample_model(12)(x).logits, hyper.sample_model(12)(x).logits)
    save_file({k: v for k, v in stored.items() if k != "width_affine_table.shift.conv1"}, weights,
              metadata={"format": "pt"})  # fmt: skip
    with pytest.raises(ValueError, match="missing_keys: width_affine_table.shift.conv1"):
        nm.NeuMetaModel.from_pretrained(tmp_path)  # part of a table: damaged, not old


def test_a_width_between_two_trained_ones_interpolates_their_rows_channel_by_channel():
    affine = WidthAffine({"g": 32}, [8, 16, 32], full_width=32)
    with torch.no_grad():
        affine.log_scale["g"][0, :8], affine.log_scale["g"][1, :16] = 0.2, 0.6  # rows 8 and 16 (their channels)
    scale, _ = affine.values("g", 12, 12, size_at=lambda width: width)
    torch.testing.assert_close(scale.log()[:8], torch.full((8,), 0.4))  # halfway between the two rows
    torch.testing.assert_close(scale.log()[8:], torch.full((4,), 0.6))  # only width 16 has these: its values
    torch.testing.assert_close(affine.values("g", 32, 32)[0], torch.ones(32))  # the full width: the identity



@pytest.mark.parametrize("family", sorted(BATCH_NORM_STAGES))
def test_a_batch_norm_stage_folds_into_plain_widths_that_compute_its_calibrated_networks(family):
    """Issue 23: with BatchNorm, each width's scale and shift act on a BatchNorm of its own during the stage
    (on a ResNet, one per layer writing a residual stream); `folded` computes every trained width's statistics
    once from data and folds them, so that the plain nested network computes, at every trained width, what the
    calibrated BatchNorm network computes -- and sampling it needs no data; with the untrained widths' statistics
    measured too, so does every width between them (their neighbours' affine interpolated, as the stage ran them).
    Importance ordering of a BatchNorm network keeps its function."""
    config, trained, norm_name, site = BATCH_NORM_STAGES[family]
    base = random_base(config)
    x = inputs_for(base.config).double()
    ordered = importance_order(base)
    torch.testing.assert_close(ordered.double()(x).logits, base.double()(x).logits, rtol=1e-9, atol=1e-9)
    nested = NestedNetwork(ordered.float(), trained)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for values in (*nested.affine.log_scale.values(), *nested.affine.shift.values()):
            values.normal_(0, 0.3, generator=generator)
    batches = [inputs_for(base.config, n=8, seed=seed) for seed in range(3)]
    with pytest.raises(ValueError, match="needs calibration= batches"):
        nested.network_at(16)
    folded = nested.folded(batches)
    assert not has_batch_norm(folded.network) and folded.affine.widths == trained
    x = x.float()
    for width in (*trained, folded.full_width):
        expected = nested.network_at(width, batches)(x).logits
        torch.testing.assert_close(folded.network_at(width)(x).logits, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="'predicted' or 'measured'"):
        nested.folded(batches, untrained_statistics="interpolated")
    measured = nested.folded(batches, untrained_statistics="measured")
    untrained = [w for w in range(trained[0], folded.full_width) if w not in trained]
    assert measured.affine.predicted == untrained
    for width in (*trained, *untrained[:: max(1, len(untrained) // 3)]):
        expected = nested.network_at(width, batches)(x).logits
        torch.testing.assert_close(measured.network_at(width)(x).logits, expected, rtol=1e-4, atol=1e-4)
    nested.train()  # training normalises each width by its batch's statistics
    inputs = batches[0]
    outputs = {}
    width = trained[0]
    norm = nested.skeleton(width).get_submodule(norm_name)
    handle = norm.register_forward_hook(lambda m, a, out: outputs.update(out=out))
    nested(width, inputs)
    handle.remove()
    size = norm.num_features
    scale, shift = (value.view(1, -1, 1, 1) for value in nested.affine.values(site, width, size))
    norm = nested.network.get_submodule(norm_name)
    gamma, beta = norm.weight[:size].view(1, -1, 1, 1), norm.bias[:size].view(1, -1, 1, 1)
    normalised = ((outputs["out"] - shift) / scale - beta) / gamma  # the width's affine and the shared one undone
    torch.testing.assert_close(normalised.mean((0, 2, 3)), torch.zeros(size), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.var((0, 2, 3), unbiased=False), torch.ones(size), atol=1e-2, rtol=0)



@pytest.mark.parametrize("family", sorted(BATCH_NORM_STAGES))
def test_a_folded_batch_norm_stage_predicts_the_widths_between_trained_ones_without_running_them(family, tmp_path):
    """Issue 23: a width the stage did not train has statistics of its own, not its neighbours' interpolated.
    Folding predicts a row for every such width from the full network's statistics: the first layer (whose
    inputs, the image, are the same at every width) exactly as the width's calibrated network has it, the whole
    network closer to it than the interpolated rows; kept through save and load, and by a hypernetwork that
    adopts the stage."""
    config, trained, norm_name, _ = BATCH_NORM_STAGES[family]
    nested = NestedNetwork(importance_order(random_base(config)), trained)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for values in (*nested.affine.log_scale.values(), *nested.affine.shift.values()):
            values.normal_(0, 0.3, generator=generator)
    batches = [inputs_for(nested.network.config, n=8, seed=seed) for seed in range(3)]
    folded = nested.folded(batches)
    untrained = [w for w in range(trained[0], folded.full_width) if w not in trained]
    assert folded.affine.widths == trained and folded.affine.predicted == untrained
    interpolating = NestedNetwork(folded.network, trained)  # the trained rows only
    with torch.no_grad():
        for key, table in interpolating.affine.log_scale.items():
            for row, width in enumerate(interpolating.affine.widths):
                table[row] = folded.affine.log_scale[key][folded.affine.rows.index(width)]
                interpolating.affine.shift[key][row] = folded.affine.shift[key][folded.affine.rows.index(width)]
    x = torch.cat(batches)

    def first_layer(network):
        outputs = {}
        first = network.get_submodule(norm_name.removesuffix(".norm"))  # conv and norm; the image at every width
        handle = first.register_forward_hook(lambda module, args, out: outputs.update(out=out))
        network(x)
        handle.remove()
        return outputs["out"]

    errors = {"predicted": 0.0, "interpolated": 0.0}
    with torch.no_grad():
        for width in untrained[1 :: len(untrained) // 4]:
            calibrated = nested.network_at(width, batches)
            first = first_layer(calibrated)  # its rows taken apart and refolded exactly (interpolating would be too)
            torch.testing.assert_close(first_layer(folded.network_at(width)), first, rtol=0, atol=1e-4)
            expected = calibrated(x).logits
            errors["predicted"] += float((folded.network_at(width)(x).logits - expected).abs().mean())
            errors["interpolated"] += float((interpolating.network_at(width)(x).logits - expected).abs().mean())
    assert errors["predicted"] < 0.8 * errors["interpolated"], errors

    folded.save_pretrained(tmp_path / "nested")
    loaded = NestedNetwork.from_pretrained(tmp_path / "nested")
    assert loaded.affine.predicted == untrained and trained_widths(tmp_path / "nested") == trained
    hyper = nm.NeuMetaModel.from_base_model(
        folded.network, width_range=(trained[0], folded.full_width), smooth=False, anchor_channels="first",
        width_affine=True, train_widths=[*trained, folded.full_width], hidden_size=32, num_layers=1,
    )  # fmt: skip
    hyper.adopt_width_affine(loaded)
    assert hyper.config.predicted_widths == untrained
    hyper.save_pretrained(tmp_path / "hyper")
    reloaded = nm.NeuMetaModel.from_pretrained(tmp_path / "hyper")
    with torch.no_grad():
        for width in (untrained[0], trained[1]):
            expected = folded.network_at(width)(x).logits
            torch.testing.assert_close(loaded.network_at(width)(x).logits, expected)
            torch.testing.assert_close(reloaded.sample_model(width)(x).logits, expected, rtol=1e-4, atol=1e-4)


def test_a_batch_norm_that_follows_none_of_its_groups_producing_convolutions_is_refused(monkeypatch):
    """Each width's statistics are folded into the convolution before each BatchNorm; a group holding a BatchNorm
    whose convolution does not produce the group (here the ResNet's stem conv taken out of its stream) has
    nowhere to fold them: refused when the stage is built, naming the BatchNorm and the way out."""
    base = random_base(nm.NeuMetaResNetCifarConfig(depth=8, image_size=8))
    groups = base.channel_groups()

    def without_stem_conv():
        return [g._replace(members=tuple(m for m in g.members if m.tensor != "stem.conv.weight")) for g in groups]

    monkeypatch.setattr(base, "channel_groups", without_stem_conv)
    with pytest.raises(ValueError, match=r"channel group 'stream0' of neumeta-resnet-cifar: BatchNorm \['stem.norm'\] "
                                         r"does not follow .* use nested.enabled=false"):  # fmt: skip
        NestedNetwork(base, [16, 32])
