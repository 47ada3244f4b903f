"""Stock transformers models as NeuMeta targets (ViT, BERT, Llama, GPT-2): the width rules, sampling at one width
and per layer (mix'n'match), pruning baselines, errors, and sampled networks that load, classify and publish with
transformers alone."""

import copy
import dataclasses
import functools
import json

import numpy as np
import pytest
import torch
import transformers
from conftest import BLOCK_NEUMETA, SMALL_INR, card_metadata, random_base, run, run_in_clean_process, trained_like
from transformers import BertConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, T5Config, ViTConfig

import neumeta_hf as nm
from neumeta_hf import targets
from neumeta_hf.nested import NestedNetwork, importance_order
from neumeta_hf.pruning import first_channels, prune_l1

FULL_WIDTH = 64
MODEL_TYPES = ["vit", "bert", "llama", "gpt2"]  # the thorough tests' types, one per feed-forward layout
# Every other supported type shares one of their layouts, and headless models their rules: the width-rule,
# sampling and reloading tests cover them (a case is a model type, or a type and "-headless").
MORE_CASES = ["deit", "roberta", "distilbert", "mistral", "qwen2", "qwen3", "gemma", "bert-headless", "vit-headless"]


def tiny_config(case: str, **overrides):
    """A stock config with hidden size 32, 2 layers and feed-forward width 64."""
    model_type = case.removesuffix("-headless")
    if model_type in ("vit", "deit"):
        config_class = {"vit": ViTConfig, "deit": transformers.DeiTConfig}[model_type]
        return config_class(**{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": FULL_WIDTH, "image_size": 8, "patch_size": 4, "num_channels": 3,
                               "num_labels": 3} | overrides)  # fmt: skip
    if model_type in ("bert", "roberta"):
        config_class = {"bert": BertConfig, "roberta": transformers.RobertaConfig}[model_type]
        return config_class(**{"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                               "intermediate_size": FULL_WIDTH, "max_position_embeddings": 32, "num_labels": 3}
                            | overrides)  # fmt: skip
    if model_type == "distilbert":
        return transformers.DistilBertConfig(**{"vocab_size": 64, "dim": 32, "n_layers": 2, "n_heads": 2,
                                                "hidden_dim": FULL_WIDTH, "max_position_embeddings": 32,
                                                "num_labels": 3} | overrides)  # fmt: skip
    if model_type in GATED_MLP_CONFIGS:
        return GATED_MLP_CONFIGS[model_type](**{"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2,
                                                "num_attention_heads": 2, "num_key_value_heads": 1,
                                                "intermediate_size": FULL_WIDTH, "max_position_embeddings": 32}
                                             | overrides)  # fmt: skip
    if model_type == "gpt2":
        return GPT2Config(**{"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32,
                             "n_inner": FULL_WIDTH} | overrides)  # fmt: skip
    raise AssertionError(model_type)


GATED_MLP_CONFIGS = {"llama": LlamaConfig, "mistral": transformers.MistralConfig, "qwen2": transformers.Qwen2Config,
                     "qwen3": transformers.Qwen3Config, "gemma": transformers.GemmaConfig}  # fmt: skip
MODEL_CLASSES = {
    "vit": transformers.ViTForImageClassification,
    "bert": transformers.BertForSequenceClassification,
    "llama": transformers.LlamaForCausalLM,
    "gpt2": transformers.GPT2LMHeadModel,
    "deit": transformers.DeiTForImageClassification,
    "roberta": transformers.RobertaForSequenceClassification,
    "distilbert": transformers.DistilBertForSequenceClassification,
    "mistral": transformers.MistralForCausalLM,
    "qwen2": transformers.Qwen2ForCausalLM,
    "qwen3": transformers.Qwen3ForCausalLM,
    "gemma": transformers.GemmaForCausalLM,
    "bert-headless": transformers.BertModel,
    "vit-headless": transformers.ViTModel,
}

# Written out here rather than read from WIDTH_RULES, so that a wrong rule fails: {layer prefix: {tensor: axis}}.
EXPECTED_MEMBERS = {
    "vit": ("vit.layers.{}.mlp.", {"fc1.weight": 0, "fc1.bias": 0, "fc2.weight": 1}),
    "bert": ("bert.encoder.layer.{}.", {"intermediate.dense.weight": 0, "intermediate.dense.bias": 0,
                                        "output.dense.weight": 1}),
    "llama": ("model.layers.{}.mlp.", {"gate_proj.weight": 0, "up_proj.weight": 0, "down_proj.weight": 1}),
    # GPT-2's Conv1D stores weights as [in, out]: c_fc's hidden units are its columns.
    "gpt2": ("transformer.h.{}.mlp.", {"c_fc.weight": 1, "c_fc.bias": 0, "c_proj.weight": 0}),
    "deit": ("deit.layers.{}.mlp.", {"fc1.weight": 0, "fc1.bias": 0, "fc2.weight": 1}),
    "roberta": ("roberta.encoder.layer.{}.", {"intermediate.dense.weight": 0, "intermediate.dense.bias": 0,
                                              "output.dense.weight": 1}),
    "distilbert": ("distilbert.transformer.layer.{}.ffn.", {"lin1.weight": 0, "lin1.bias": 0, "lin2.weight": 1}),
    "bert-headless": ("encoder.layer.{}.", {"intermediate.dense.weight": 0, "intermediate.dense.bias": 0,
                                            "output.dense.weight": 1}),
    "vit-headless": ("layers.{}.mlp.", {"fc1.weight": 0, "fc1.bias": 0, "fc2.weight": 1}),
}
for gated in ("mistral", "qwen2", "qwen3", "gemma"):
    EXPECTED_MEMBERS[gated] = EXPECTED_MEMBERS["llama"]
LLAMA_MLP_BIAS = {"gate_proj.weight": 0, "gate_proj.bias": 0, "up_proj.weight": 0, "up_proj.bias": 0,
                  "down_proj.weight": 1}  # fmt: skip
# The tensor that maps the hidden units back to the model width (its bias does not follow the width).
DOWN_PROJECTION = {"vit": "mlp.fc2.weight", "bert": "output.dense.weight", "llama": "mlp.down_proj.weight",
                   "gpt2": "mlp.c_proj.weight"}  # fmt: skip
# The permutation tests also cover Llama's optional feed-forward biases.
PERMUTATION_CASES = [(t, {}) for t in MODEL_TYPES + MORE_CASES] + [("llama", {"mlp_bias": True})]
PERMUTATION_IDS = MODEL_TYPES + MORE_CASES + ["llama-mlp_bias"]


def random_stock(model_type: str, seed: int = 0, **overrides):
    """A tiny stock model with every parameter random (biases and norms included, std 0.3), in eval mode."""
    torch.manual_seed(seed)
    model = MODEL_CLASSES[model_type](tiny_config(model_type, **overrides))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model.eval()


def inputs_of(config, double=False, seed=0):
    inputs = targets.example_inputs(config, batch_size=4, generator=torch.Generator().manual_seed(seed))
    return {k: v.double() if double and v.is_floating_point() else v for k, v in inputs.items()}


@torch.no_grad()
def logits(model, inputs):
    """The logits, or a headless model's last hidden states."""
    return targets.task_for(model.config, type(model)).function_output(model(**inputs))


@functools.cache
def stock_hyper(model_type: str):
    """(base model, hypernetwork over widths 16-64 around it), built once per model type; copy before changing."""
    base = random_stock(model_type)
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(16, FULL_WIDTH), **SMALL_INR)
    return base, hyper


@functools.cache
def trained_hyper(model_type: str):
    """The hypernetwork with a non-zero INR output layer, as after training: generations differ from the base's."""
    return trained_like(stock_hyper(model_type)[1])


@functools.cache
def sampled(model_type: str, width: int | None = None, widths: tuple[int, ...] | None = None):
    """`trained_hyper(model_type).sample_model(...)`, sampled once; read it, do not change it."""
    return trained_hyper(model_type).sample_model(width, widths=list(widths) if widths else None)


def tensors(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, tied ones under each of their names, non-persistent buffers included."""
    return dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))


def group_members(model) -> set:
    return {member[:2] for group in targets.channel_groups(model) for member in group.members}


# ------------------------------------------------------------------------------------------------ width rules


@pytest.mark.parametrize("model_type, overrides", PERMUTATION_CASES, ids=PERMUTATION_IDS)
def test_channel_groups_are_each_layers_feed_forward_units(model_type, overrides):
    model = random_stock(model_type, **overrides)
    groups = targets.channel_groups(model)
    prefix, members = EXPECTED_MEMBERS[model_type]
    if overrides.get("mlp_bias"):
        members = LLAMA_MLP_BIAS
    assert [group.name for group in groups] == ["layer0.ffn", "layer1.ffn"]
    assert all(group.scales for group in groups)
    state = model.state_dict()
    for layer, group in enumerate(groups):
        assert {m[:2] for m in group.members} == {(prefix.format(layer) + name, axis) for name, axis in members.items()}
        assert all(m.stop is None and state[m.tensor].shape[m.axis] == FULL_WIDTH for m in group.members)
    assert targets.network_width(model.config) == FULL_WIDTH
    assert isinstance(targets.target(model.config.model_type), targets.StockTarget)


def test_the_width_rule_tests_cover_every_supported_type():
    assert {tiny_config(case).model_type for case, _ in PERMUTATION_CASES} == set(targets.WIDTH_RULES)


def permute(model, order_seed=1, skip=None):
    """A float64 copy of `model` with each layer's feed-forward units in a random order, every group member
    permuted alike except `skip` (a (name, axis) member)."""
    permuted = copy.deepcopy(model).double()
    state = tensors(permuted)
    generator = torch.Generator().manual_seed(order_seed)
    with torch.no_grad():
        for group in targets.channel_groups(permuted):
            order = torch.randperm(FULL_WIDTH, generator=generator)
            assert not torch.equal(order, torch.arange(FULL_WIDTH))
            for member in group.members:
                if member != skip:
                    state[member.tensor].copy_(state[member.tensor].index_select(member.axis, order))
    return permuted


@pytest.mark.parametrize("model_type, overrides", PERMUTATION_CASES, ids=PERMUTATION_IDS)
def test_permuting_the_width_rules_tensors_keeps_the_function_and_each_one_is_needed(model_type, overrides):
    model = random_stock(model_type, **overrides)
    inputs = inputs_of(model.config, double=True)
    expected = logits(copy.deepcopy(model).double(), inputs)
    torch.testing.assert_close(logits(permute(model), inputs), expected, rtol=0, atol=1e-6)
    # Leaving out any one member of a group changes the function: the rule names no tensor in vain, and the
    # check above could fail.
    for member in targets.channel_groups(model)[0].members:
        difference = (logits(permute(model, skip=member), inputs) - expected).abs().max()
        assert difference > 1e-3, member


def test_gpt2_default_width_is_four_times_the_embedding():
    config = tiny_config("gpt2", n_inner=None)
    assert targets.network_width(config) == 4 * config.n_embd
    assert targets.network_width(targets.config_at_width(config, 40)) == 40
    family_config = config.to_dict() | {"architectures": ["GPT2LMHeadModel"]}
    hyper_config = nm.NeuMetaConfig(family="gpt2", family_config=family_config)
    assert hyper_config.full_width == 128 and hyper_config.family_config["n_inner"] == 128


# ------------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("model_type", MODEL_TYPES + MORE_CASES)
def test_sampled_networks_are_the_stock_class_and_full_width_is_the_base(model_type):
    base, hyper = stock_hyper(model_type)
    assert hyper.config.smoothing is not None  # the units were permuted, and the function checked
    inputs = inputs_of(base.config)
    full = hyper.sample_model(FULL_WIDTH)
    assert type(full) is type(base) and not full.training
    assert targets.network_width(full.config) == FULL_WIDTH
    torch.testing.assert_close(logits(full, inputs), logits(base, inputs), rtol=0, atol=1e-4)
    for width in (24, 41):
        network = sampled(model_type, width)
        assert type(network) is type(base) and targets.network_width(network.config) == width
        state = network.state_dict()
        for name, axis in group_members(network):
            assert state[name].shape[axis] == width, name
        out = logits(network, inputs)
        assert out.shape == logits(base, inputs).shape and out.isfinite().all()
    if model_type == "gpt2":  # its output layer is its embedding, tied again after loading by assignment
        assert network.get_output_embeddings().weight is network.get_input_embeddings().weight


def plant(model, chosen: dict[int, torch.Tensor]):
    """Zero the input side (every group member but the down projection) of each layer's units not in
    `chosen[layer]`: those units then output zero, have the smallest L1 norms and can go without changing the
    function; the chosen units' input weights are scaled up."""
    state = tensors(model)
    down = DOWN_PROJECTION[model.config.model_type]
    with torch.no_grad():
        for layer, group in enumerate(targets.channel_groups(model)):
            dead = torch.tensor([u for u in range(FULL_WIDTH) if u not in set(chosen[layer].tolist())])
            for name, axis, *_ in group.members:
                if not name.endswith(down):
                    state[name].index_fill_(axis, dead, 0.0)
                    state[name].index_copy_(axis, chosen[layer], 5 * state[name].index_select(axis, chosen[layer]))
    return model


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_prune_l1_keeps_the_largest_units_of_a_stock_model(model_type):
    width = 24
    generator = torch.Generator().manual_seed(5)
    chosen = {layer: torch.randperm(FULL_WIDTH, generator=generator)[:width].sort().values for layer in (0, 1)}
    model = plant(random_stock(model_type), chosen)
    pruned = prune_l1(model, width)
    assert type(pruned) is type(model) and targets.network_width(pruned.config) == width
    state, pruned_state = tensors(model), tensors(pruned)
    members = {name: axis for group in targets.channel_groups(model) for name, axis, *_ in group.members}
    layer_of = {name: layer for layer, g in enumerate(targets.channel_groups(model)) for name, *_ in g.members}
    for name, tensor in pruned_state.items():
        if name in members:
            expected = state[name].index_select(members[name], chosen[layer_of[name]])
        else:
            expected = state[name]
        assert torch.equal(tensor, expected), name
    inputs = inputs_of(model.config)
    torch.testing.assert_close(logits(pruned, inputs), logits(model, inputs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_first_channels_cuts_a_stock_model_to_its_first_units(model_type):
    width = 24
    model = plant(random_stock(model_type), {layer: torch.arange(width) for layer in (0, 1)})
    nested = first_channels(model, width)
    assert type(nested) is type(model) and targets.network_width(nested.config) == width
    state = tensors(model)
    members = dict(member[:2] for group in targets.channel_groups(model) for member in group.members)
    for name, tensor in tensors(nested).items():
        expected = state[name].narrow(members[name], 0, width) if name in members else state[name]
        assert torch.equal(tensor, expected), name
    if model_type == "gpt2":  # tied output layer and embeddings stay tied
        assert nested.lm_head.weight is nested.transformer.wte.weight
    inputs = inputs_of(model.config)
    torch.testing.assert_close(logits(nested, inputs), logits(model, inputs), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- mix'n'match


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_mix_and_match_combines_each_layers_own_width(model_type):
    narrow, wide = 24, 41
    mixed = sampled(model_type, widths=(narrow, wide))
    single = {narrow: sampled(model_type, narrow), wide: sampled(model_type, wide)}
    assert type(mixed) is type(single[narrow])
    assert targets.network_width(mixed.config) == wide and mixed.config.neumeta_layer_widths == [narrow, wide]
    mixed_state = tensors(mixed)
    groups = targets.channel_groups(mixed)
    generated = set()
    for layer, (group, width) in enumerate(zip(groups, [narrow, wide])):
        source = tensors(single[width])
        for name, axis, *_ in group.members:
            generated.add(name)
            assert torch.equal(mixed_state[name].narrow(axis, 0, width), source[name]), name
            padding = mixed_state[name].narrow(axis, width, wide - width)
            assert padding.numel() == 0 or not padding.any(), name  # exactly zero
    for name, tensor in tensors(single[narrow]).items():
        if name not in generated:
            assert torch.equal(mixed_state[name], tensor), name
    # The function: the narrow network with layer 1's feed-forward modules taken from the wide one.
    composite = copy.deepcopy(single[narrow])
    for name, *_ in groups[1].members:
        module = name.rsplit(".", 1)[0]
        composite.set_submodule(module, copy.deepcopy(single[wide].get_submodule(module)))
    inputs = inputs_of(mixed.config)
    torch.testing.assert_close(logits(mixed, inputs), logits(composite, inputs), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(mixed, inputs), logits(single[narrow], inputs), atol=1e-3)
    if model_type == "llama":
        same = trained_hyper(model_type).sample_model(widths=[narrow, narrow]).state_dict()
        assert all(torch.equal(tensor, same[name]) for name, tensor in single[narrow].state_dict().items())


def test_mix_and_match_errors():
    _, hyper = stock_hyper("llama")
    with pytest.raises(ValueError, match=r"one width per layer \(2\)"):
        hyper.sample_model(widths=[24])
    with pytest.raises(ValueError, match=r"one width per layer \(2\)"):
        hyper.sample_model(widths=[24, 32, 40])
    with pytest.raises(ValueError, match="width must be at least 1 .*trained range 16-64"):
        hyper.sample_model(widths=[24, 0])
    with pytest.raises(TypeError, match="width must be an integer"):
        hyper.sample_model(widths=[24, 2.5])
    with pytest.raises(TypeError, match="widths must be a list of integer widths, one per layer, got {0: 24"):
        hyper.sample_model(widths={0: 24, 1: 32})  # the dict's keys would have been taken for widths
    generated = hyper.sample_model(widths=(w for w in [24, 32]))  # a generator is as good as a list
    assert generated.config.neumeta_layer_widths == [24, 32]
    with pytest.raises(TypeError, match="either width or widths"):
        hyper.sample_model(24, widths=[24, 24])
    with pytest.raises(TypeError, match="either width or widths"):
        hyper.sample_model()
    with pytest.warns(UserWarning, match="outside the trained range 16-64"):
        assert hyper.sample_model(widths=[24, 80]).config.intermediate_size == 80
    lenet = nm.NeuMetaModel.from_base_model(random_base(nm.NeuMetaLeNetConfig()), (8, 32), smooth=False, **SMALL_INR)
    with pytest.raises(ValueError, match="neumeta-lenet's channel groups are coupled: pass one width"):
        lenet.sample_model(widths=[8, 16, 32])


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "model_class, config",
    [
        (transformers.GPTNeoXForCausalLM, GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                        num_attention_heads=2, intermediate_size=64)),
        (transformers.T5ForConditionalGeneration, T5Config(vocab_size=64, d_model=32, d_ff=64, d_kv=16,
                                                           num_layers=2, num_heads=2)),
    ],
    ids=["gpt_neox", "t5"],
)  # fmt: skip
def test_unsupported_model_type_lists_the_supported_ones(model_class, config):
    model = model_class(config).eval()
    supported = "stock transformers model types with a width rule: vit, deit, bert, roberta, distilbert, llama, mistral"
    with pytest.raises(ValueError, match=f"{config.model_type}.*{supported}.*WIDTH_RULES"):
        nm.NeuMetaModel.from_base_model(model, width_range=(16, 64), **SMALL_INR)
    # The pruning baselines and the channel groups refuse it alike (not an AttributeError about `width`).
    for call in (lambda: targets.channel_groups(model), lambda: prune_l1(model, 32),
                 lambda: first_channels(model, 32), lambda: targets.network_width(config)):  # fmt: skip
        with pytest.raises(ValueError, match="WIDTH_RULES"):
            call()


@pytest.mark.parametrize(
    "architectures, message",
    [
        (None, r"names no model class .*set it, e.g. config.architectures = \['ViTForImageClassification'\]"),
        (["BertForSequenceClassification"], "names no model class of that type"),
        (["NoSuchModelForImageClassification"], "names no model class of that type"),
    ],
)
def test_stock_config_must_name_its_model_class(architectures, message):
    family_config = tiny_config("vit", architectures=architectures).to_dict()
    with pytest.raises(ValueError, match=message):
        nm.NeuMetaConfig(family="vit", family_config=family_config)


def test_family_config_of_another_model_type_is_refused():
    family_config = tiny_config("bert", architectures=["BertForSequenceClassification"]).to_dict()
    with pytest.raises(ValueError, match="family_config is for 'bert' but family is 'vit'"):
        nm.NeuMetaConfig(family="vit", family_config=family_config)


# -------------------------------------------------------------------------------------------- save and load

AUTO_CLASSES = {
    "vit": transformers.AutoModelForImageClassification,
    "bert": transformers.AutoModelForSequenceClassification,
    "llama": transformers.AutoModelForCausalLM,
    "gpt2": transformers.AutoModelForCausalLM,
}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_round_trip_and_sampled_network_without_custom_code(model_type, tmp_path):
    """A saved and loaded stock hypernetwork samples the same weights, buffers (Llama's rotary frequencies, which
    are not saved) and outputs; its sampled network, saved, is config + weights + card (+ an image processor for
    ViT), no code, and loads with the Auto class without trust_remote_code."""
    hyper = trained_hyper(model_type)
    hyper.save_pretrained(tmp_path / "hyper")
    loaded = nm.NeuMetaModel.from_pretrained(tmp_path / "hyper")
    assert loaded.config.family == model_type and loaded.config.smoothing == hyper.config.smoothing
    network = loaded.sample_model(widths=[24, 41])
    expected = sampled(model_type, widths=(24, 41))
    network_tensors, expected_tensors = tensors(network), tensors(expected)
    assert network_tensors.keys() == expected_tensors.keys()
    assert all(torch.equal(t, network_tensors[name]) for name, t in expected_tensors.items())
    if model_type == "llama":
        assert any("rotary" in name for name, _ in network.named_buffers())
    inputs = inputs_of(network.config)
    assert torch.equal(logits(network, inputs), logits(expected, inputs))

    network.save_pretrained(tmp_path / "net")
    names = {p.name for p in (tmp_path / "net").iterdir()}
    assert not any(name.endswith(".py") for name in names)
    assert {"config.json", "model.safetensors", "README.md"} <= names
    assert ("preprocessor_config.json" in names) == (model_type == "vit")
    config = json.loads((tmp_path / "net" / "config.json").read_text())
    assert "auto_map" not in config and config["architectures"] == [type(network).__name__]
    assert config["neumeta_layer_widths"] == [24, 41]
    readme = (tmp_path / "net" / "README.md").read_text()
    width_field = targets.WIDTH_RULES[model_type].width_field
    assert f"(`{tmp_path.name}/hyper`, a local directory)" in readme and str(tmp_path) not in readme
    assert f"`{width_field}` is **41**" in readme
    assert "(per layer: [24, 41]" in readme and "trust_remote_code" not in readme
    assert f"{AUTO_CLASSES[model_type].__name__}.from_pretrained" in readme
    reloaded = AUTO_CLASSES[model_type].from_pretrained(tmp_path / "net")
    assert type(reloaded) is type(network) and reloaded.config.neumeta_layer_widths == [24, 41]
    assert torch.equal(logits(reloaded, inputs), logits(network, inputs))


@pytest.mark.parametrize("case", MORE_CASES)
def test_more_types_and_headless_models_save_and_reload_with_transformers_alone(case, tmp_path):
    """Issue 25: Qwen2, Mistral, RoBERTa, DistilBERT and DeiT were "Unknown family" and headless models
    (`BertModel`, `ViTModel`) crashed on the missing logits. Each now samples a network of its own class that
    saves without code (a vision type with its image processor), names its Auto class, and reloads unchanged."""
    network = sampled(case, 24)
    network.save_pretrained(tmp_path)
    names = {path.name for path in tmp_path.iterdir()}
    assert not any(name.endswith(".py") for name in names)
    assert ("preprocessor_config.json" in names) == (network.config.model_type in ("vit", "deit"))
    if case == "deit":  # its stock processor would centre-crop to 224 pixels
        processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
        assert processor["do_center_crop"] is False and processor["size"] == {"height": 8, "width": 8}
    auto_class = targets.task_for(network.config, type(network)).auto_class
    assert auto_class is (transformers.AutoModel if case.endswith("-headless") else auto_class)
    assert f"{auto_class.__name__}.from_pretrained" in (tmp_path / "README.md").read_text()
    reloaded = auto_class.from_pretrained(tmp_path)
    assert type(reloaded) is type(network) and targets.network_width(reloaded.config) == 24
    inputs = inputs_of(network.config)
    assert torch.equal(logits(reloaded, inputs), logits(network, inputs))


# Classifies a grayscale PIL image with the pipeline (which converts it to RGB) with a 3-channel ViT, and a
# 1-channel ViT as its model card says (H x W x 1 arrays); transformers, torch, Pillow and numpy only.
PIPELINE_WITHOUT_NEUMETA = BLOCK_NEUMETA + r"""
import numpy as np, torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

directory = sys.argv[1]
gray = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8), "L")
results = {}
for name in ("rgb", "gray"):
    model = AutoModelForImageClassification.from_pretrained(f"{directory}/{name}")
    inputs = torch.from_numpy(np.load(f"{directory}/{name}/inputs.npy"))
    classify = pipeline("image-classification", model=f"{directory}/{name}")
    image = gray if name == "rgb" else np.asarray(gray)[..., None]
    results[name] = {"module": type(model).__module__, "logits": model(inputs).logits.tolist(),
                     "pipeline": classify(image, top_k=1)[0], "processor": type(classify.image_processor).__name__}
print(json.dumps(results))
"""


def test_sampled_vit_classifies_images_with_transformers_alone(tmp_path):
    gray_base = random_stock("vit", num_channels=1)
    gray_hyper = nm.NeuMetaModel.from_base_model(gray_base, width_range=(16, FULL_WIDTH), smooth=False, **SMALL_INR)
    networks = {"rgb": sampled("vit", 24), "gray": gray_hyper.sample_model(24)}
    for name, network in networks.items():
        network.save_pretrained(tmp_path / name)
        np.save(tmp_path / name / "inputs.npy", inputs_of(network.config)["pixel_values"].numpy())
    recipe = 'np.asarray(Image.open("image.png").convert("L"))[..., None]'  # what the 1-channel card shows
    assert recipe in (tmp_path / "gray" / "README.md").read_text()
    loaded = run_in_clean_process(PIPELINE_WITHOUT_NEUMETA, tmp_path)
    for name, network in networks.items():
        result = loaded[name]
        assert result["module"] == "transformers.models.vit.modeling_vit"
        assert result["processor"].startswith("ViTImageProcessor")
        pixels = torch.from_numpy(np.load(tmp_path / name / "inputs.npy"))
        torch.testing.assert_close(torch.tensor(result["logits"]), logits(network, {"pixel_values": pixels}))
        assert result["pipeline"]["label"] in network.config.id2label.values()


def word_tokenizer(vocab_size: int):
    """A real transformers tokenizer (word-level, built offline with `tokenizers`) over `vocab_size` ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocabulary = {"[UNK]": 0} | {f"w{i}": i for i in range(1, vocab_size)}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def test_the_base_image_processor_travels_to_every_sampled_network(tmp_path):
    """Issue 25: from_base_model took only a model object, and sampled ViTs were saved with a processor rebuilt
    at mean/std 0.5, whatever the base's own said; through pipeline() they then saw other pixels."""
    base = random_stock("vit", image_size=8)
    base.save_pretrained(tmp_path / "base")
    processor = transformers.ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.2] * 3, image_std=[0.3] * 3)
    processor.save_pretrained(tmp_path / "base")
    hyper = nm.NeuMetaModel.from_base_model(str(tmp_path / "base"), width_range=(16, FULL_WIDTH), smooth=False, **SMALL_INR)
    hyper.save_pretrained(tmp_path / "hyper")
    reloaded = nm.NeuMetaModel.from_pretrained(tmp_path / "hyper")
    assert list(reloaded.preprocessor.image_mean) == [0.2] * 3
    network = reloaded.sample_model(24)
    network.save_pretrained(tmp_path / "net")
    saved = json.loads((tmp_path / "net" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == [0.2] * 3 and saved["image_std"] == [0.3] * 3
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    classify = transformers.pipeline("image-classification", model=str(tmp_path / "net"))
    top = classify(image, top_k=1)[0]
    with torch.no_grad():
        probabilities = network(**processor(image, return_tensors="pt")).logits.softmax(-1)[0]
    assert top["label"] == network.config.id2label[int(probabilities.argmax())]
    assert top["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_the_base_tokenizer_travels_to_every_sampled_network(tmp_path):
    """Issue 25: sampled Llama directories had no tokenizer, so pipeline("text-generation", model=dir) failed."""
    base = random_stock("llama")
    base.save_pretrained(tmp_path / "base")
    word_tokenizer(base.config.vocab_size).save_pretrained(tmp_path / "base")
    hyper = nm.NeuMetaModel.from_base_model(tmp_path / "base", width_range=(16, FULL_WIDTH), smooth=False, **SMALL_INR)
    network = hyper.sample_model(24)
    network.save_pretrained(tmp_path / "net")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "net")
    assert tokenizer("w3 w5 w9")["input_ids"] == [3, 5, 9]
    generate = transformers.pipeline("text-generation", model=str(tmp_path / "net"))
    generated = generate("w3 w5", max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    expected = network.generate(torch.tensor([[3, 5]]), max_new_tokens=4, do_sample=False)[0]
    assert list(generated) == expected.tolist()


# ------------------------------------------------------------------------------------------------------- Hub

PUSH_SAMPLED_VIT = """
import sys
import neumeta_hf as nm

nm.NeuMetaModel.from_pretrained(sys.argv[1]).sample_model(24).push_to_hub("user/vit-w24")
"""


@pytest.mark.slow
def test_push_sampled_stock_network_uploads_card_and_processor_in_one_commit(hub, tmp_path):  # noqa: F811
    hyper = trained_hyper("vit")
    hyper.save_pretrained(tmp_path / "hyper")
    result = run([str(tmp_path / "hyper")], hub, tmp_path, code=PUSH_SAMPLED_VIT)
    assert result.returncode == 0, result.stderr[-3000:]
    files = hub.repo_files("user/vit-w24")
    assert sorted(files) == ["README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    assert hub.commits("user/vit-w24") == 1
    metadata = card_metadata(files["README.md"])
    assert metadata["pipeline_tag"] == "image-classification" and "neumeta" in metadata["tags"]
    text = files["README.md"].decode()
    assert "**ViTForImageClassification** whose feed-forward width `intermediate_size` is **24**" in text
    assert f"`{tmp_path.name}/hyper`, a local directory" in text and str(tmp_path) not in text
    assert 'from_pretrained("user/vit-w24")' in text and "path/to/this/directory" not in text
    assert "no custom code travels with it" in text
    config = json.loads(files["config.json"])
    assert config["intermediate_size"] == 24 and config["architectures"] == ["ViTForImageClassification"]
    processor = json.loads(files["preprocessor_config.json"])
    assert processor["image_processor_type"] == "ViTImageProcessor"
    assert processor["size"] == {"height": 8, "width": 8}
    # What a stranger gets: the pushed files load as the network sampled here.
    (tmp_path / "pushed").mkdir()
    for name, data in files.items():
        (tmp_path / "pushed" / name).write_bytes(data)
    pushed = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "pushed").state_dict()
    expected = sampled("vit", 24).state_dict()
    assert pushed.keys() == expected.keys() and all(torch.equal(pushed[n], t) for n, t in expected.items())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_default_inr_is_no_larger_than_the_network_it_generates(model_type):
    """With no hidden_size given, from_base_model picks the widest INR that is at most the base's size (the
    paper's 256 gave a 3.9 M-parameter INR for a 279 K-parameter Llama); asked for, the size is kept."""
    base = random_stock(model_type)
    default = nm.NeuMetaModel.from_base_model(base)
    inr = sum(p.numel() for p in default.inr.parameters())
    assert inr <= base.num_parameters() and default.config.hidden_size < 256
    wider = nm.NeuMetaModel.from_base_model(base, hidden_size=2 * default.config.hidden_size)
    assert sum(p.numel() for p in wider.inr.parameters()) > base.num_parameters()  # the widest that fits
    assert nm.NeuMetaModel.from_base_model(base, hidden_size=256).config.hidden_size == 256


@pytest.mark.parametrize("model_type", ["vit", "llama"])
def test_a_bfloat16_base_gives_bfloat16_networks(model_type, tmp_path):
    """Issue 25: a bfloat16 base gave float32 sampled networks (whose configs said bfloat16). Now they keep the
    base's dtype through save and load, the full width is the base bit for bit, and `dtype=` (CLI `--dtype`)
    chooses otherwise."""
    base = random_stock(model_type).to(torch.bfloat16)
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(16, FULL_WIDTH), smooth=False, **SMALL_INR)
    hyper.save_pretrained(tmp_path / "hyper")
    hyper = nm.NeuMetaModel.from_pretrained(tmp_path / "hyper")
    assert hyper.dtype == torch.float32  # generated in float32, then cast
    full = hyper.sample_model(FULL_WIDTH)
    assert full.dtype == torch.bfloat16
    for name, tensor in base.state_dict().items():
        assert torch.equal(full.state_dict()[name], tensor), name
    hyper.sample_model(24).save_pretrained(tmp_path / "w24")
    reloaded = MODEL_CLASSES[model_type].from_pretrained(tmp_path / "w24")
    assert reloaded.dtype == torch.bfloat16 and reloaded.config.dtype == torch.bfloat16
    assert hyper.sample_model(24, dtype="float32").dtype == torch.float32
    with pytest.raises(ValueError, match="floating-point torch dtype"):
        hyper.sample_model(24, dtype="int8")


PUSH_SAMPLED = """
import sys
import neumeta_hf as nm

nm.NeuMetaModel.from_pretrained(sys.argv[1]).sample_model(24).push_to_hub(sys.argv[2])
"""
# A stranger with transformers alone (neumeta_hf blocked) runs a pushed network from the Hub through `pipeline`:
# a ViT on an image with the processor that arrived, a Llama generating with the tokenizer that arrived.
STRANGER_USES_PUSHED = BLOCK_NEUMETA + r"""
import numpy as np, torch
from PIL import Image
from transformers import pipeline

repo = sys.argv[1]
if repo.endswith("vit"):
    classify = pipeline("image-classification", model=repo)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
    pixels = classify.image_processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = classify.model(pixel_values=pixels).logits[0].tolist()
    print(json.dumps({"mean": list(classify.image_processor.image_mean), "logits": logits,
                      "top": classify(image, top_k=1)[0]["label"]}))
else:
    generate = pipeline("text-generation", model=repo)
    tokens = generate("w3 w5", max_new_tokens=4, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    print(json.dumps({"tokens": list(tokens), "ids": generate.tokenizer("w3 w5")["input_ids"]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["vit", "llama"])
def test_a_pushed_network_works_for_a_stranger_with_the_bases_processor_or_tokenizer(model_type, hub, tmp_path):  # noqa: F811
    """Issue 25: a sampled network pushed to the Hub, loaded in a clean environment through `pipeline`, is fed by
    its base's own image processor (its statistics, not 0.5) or tokenizer, and computes what the network sampled
    here computes."""
    base = random_stock(model_type)
    base.save_pretrained(tmp_path / "base")
    if model_type == "vit":
        processor = transformers.ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.2, 0.3, 0.4],
                                                   image_std=[0.5, 0.6, 0.7])  # fmt: skip
    else:
        processor = word_tokenizer(base.config.vocab_size)
    processor.save_pretrained(tmp_path / "base")
    hyper = trained_like(nm.NeuMetaModel.from_base_model(tmp_path / "base", width_range=(16, FULL_WIDTH), **SMALL_INR))
    hyper.save_pretrained(tmp_path / "hyper")
    repo = f"user/{model_type}"
    pushed = run([str(tmp_path / "hyper"), repo], hub, tmp_path, code=PUSH_SAMPLED)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert hub.commits(repo) == 1
    stranger = run([repo], hub, tmp_path, code=STRANGER_USES_PUSHED)
    assert stranger.returncode == 0, stranger.stderr[-3000:]
    seen = json.loads(stranger.stdout.strip().splitlines()[-1])

    network = nm.NeuMetaModel.from_pretrained(tmp_path / "hyper").sample_model(24)
    if model_type == "vit":
        from PIL import Image

        assert seen["mean"] == [0.2, 0.3, 0.4]
        image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8))
        with torch.no_grad():
            expected = network(**processor(image, return_tensors="pt")).logits[0]
        torch.testing.assert_close(torch.tensor(seen["logits"]), expected, rtol=0, atol=1e-5)
        assert seen["top"] == network.config.id2label[int(expected.argmax())]
    else:
        assert seen["ids"] == [3, 5]
        expected = network.generate(torch.tensor([[3, 5]]), max_new_tokens=4, do_sample=False)[0]
        assert seen["tokens"] == expected.tolist()


@pytest.mark.parametrize(
    "model_class, config_class, layout",
    [
        (transformers.OlmoForCausalLM, transformers.OlmoConfig, "gated-mlp"),
        (transformers.ErnieForSequenceClassification, transformers.ErnieConfig, "bert-ffn"),
    ],
)
def test_a_type_without_a_rule_is_served_by_the_layout_its_blocks_follow(model_class, config_class, layout, tmp_path):
    """Issue 25: any type whose MLP is gate/up/down (or BERT's feed-forward) was "Unknown family". from_base_model
    now finds the shared layout it follows (checked by permuting its units), records it, and the saved
    hypernetwork loads and samples in the stock class; a layout that leaves out a coupled tensor is not taken."""
    kwargs = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": FULL_WIDTH, "max_position_embeddings": 32}  # fmt: skip
    torch.manual_seed(0)
    base = model_class(config_class(**kwargs)).eval()
    assert base.config.model_type not in targets.WIDTH_RULES
    base.save_pretrained(tmp_path / "base")
    hyper = nm.NeuMetaModel.from_base_model(tmp_path / "base", width_range=(16, FULL_WIDTH), **SMALL_INR)
    assert hyper.config.width_layout == layout
    inputs = inputs_of(base.config)
    torch.testing.assert_close(logits(hyper.sample_model(FULL_WIDTH), inputs), logits(base, inputs), rtol=0, atol=1e-4)
    hyper.save_pretrained(tmp_path / "hyper")
    network = nm.NeuMetaModel.from_pretrained(tmp_path / "hyper").sample_model(24)
    assert type(network) is model_class and network.config.intermediate_size == 24


def test_a_layout_that_misses_a_coupled_tensor_is_not_taken(monkeypatch):
    rule = targets.LAYOUTS["gated-mlp"]
    without_down = dataclasses.replace(rule, members={k: v for k, v in rule.members.items() if "down" not in k})
    monkeypatch.setattr(targets, "LAYOUTS", {"gated-mlp": without_down})
    monkeypatch.delitem(targets._TARGETS, "olmo", raising=False)  # as another test may have registered it
    torch.manual_seed(0)
    base = transformers.OlmoForCausalLM(transformers.OlmoConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=FULL_WIDTH,
    )).eval()  # fmt: skip
    assert targets.discover_layout(base) is None and not targets.is_known("olmo")
    with pytest.raises(ValueError, match="Unknown family 'olmo'.*layouts gated-mlp"):
        nm.NeuMetaModel.from_base_model(base, width_range=(16, FULL_WIDTH), **SMALL_INR)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_a_nested_stage_runs_one_width_per_layer_as_the_hypernetwork_built_on_it_samples_it(model_type):
    """A nested stage's mixed network (one width per layer, each layer with its own width's scales and shifts) is
    the one its hypernetwork samples with `widths=` before any correction is trained, whether run through the
    stage's differentiable forward (what `mix_layers` trains) or as a standalone network."""
    base = random_stock(model_type)
    base.config.architectures = [type(base).__name__]  # as a saved or trained model's config names it
    torch.manual_seed(0)
    nested = NestedNetwork(importance_order(base), [16, 32, 48, FULL_WIDTH])
    with torch.no_grad():  # each trained width's own scales and shifts, as a trained stage has
        for table in [*nested.affine.log_scale.values(), *nested.affine.shift.values()]:
            table.normal_(0.0, 0.2)
    hyper = nm.NeuMetaModel.from_base_model(
        nested.network, width_range=(16, FULL_WIDTH), smooth=False, anchor_channels="first", width_affine=True,
        train_widths=[16, 32, 48, FULL_WIDTH], **SMALL_INR,
    )  # fmt: skip
    hyper.adopt_width_affine(nested)
    inputs = inputs_of(nested.network.config)
    mixed = [24, 48]
    expected = logits(hyper.sample_model(widths=mixed), inputs)
    torch.testing.assert_close(logits(nested.network_at(mixed), inputs), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        through_stage = targets.task_for(nested.network.config).function_output(nested.eval()(mixed, **inputs))
    torch.testing.assert_close(through_stage, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, logits(nested.network_at(24), inputs), atol=1e-3)
    with pytest.raises(ValueError, match=r"one width per layer \(2\)"):
        nested.network_at([24, 32, 40])
