"""Language models through the training scripts (issue 24): a recipe's text data, a stock Llama trained on it as
the base, the nested pipeline and the hypernetwork over its feed-forward width, and what a user gets out."""

import json
import sysconfig
from pathlib import Path

import pytest
import torch
import transformers
from conftest import REPO

import neumeta_hf as nm
from neumeta_hf.nested import NestedNetwork
from neumeta_hf.text_data import TextDataConfig
from training import train as train_script
from training.recipe import load_config
from training.train_base import SlimmableObjective, adopt_base_preprocessing

RECIPE = REPO / "training" / "configs" / "shakespeare_llama.yaml"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
VOCABULARY = 384


@pytest.fixture
def text_directory(tmp_path):
    """Real text, no download: 40 short modules of the standard library (about 250 kB), one document each."""
    directory = tmp_path / "texts"
    directory.mkdir()
    texts = {path.stem: path.read_text(encoding="utf-8") for path in sorted(STDLIB.glob("*.py"))}
    for name in [name for name, text in texts.items() if 2_000 < len(text) < 12_000][:40]:
        (directory / f"{name}.txt").write_text(texts[name], encoding="utf-8")
    return directory


def tiny_llama_recipe(tmp_path, text_directory, *extra):
    """The shipped recipe on a small text directory, with a Llama small enough to train in seconds."""
    return load_config(RECIPE, [
        f"output_dir={tmp_path / 'run'}", f"data.name={text_directory}", "data.block_size=32",
        f"data.vocab_size={VOCABULARY}", f"data.cache_dir={tmp_path / 'cache'}",
        "base.family_config.hidden_size=32", "base.family_config.intermediate_size=64",
        "base.family_config.num_hidden_layers=2", "base.family_config.num_attention_heads=2",
        "base.family_config.num_key_value_heads=2", "base.family_config.max_position_embeddings=32",
        "base.epochs=2", "base.batch_size=32", "base.learning_rate=5.0e-3", "nested.epochs=0.5",
        "nested.batch_size=32", "training.batch_size=32", "hypernetwork.width_range=[16,64]",
        "hypernetwork.train_widths=[16,32,48,64]", "hypernetwork.config.hidden_size=32", "training.epochs=0.5",
        "training.warmup_steps=5", "training.eval_every=50", "training.eval_widths=[16,64]",
        "sweep.widths=[16,24,32,64]", "sweep.save_width=24", *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_a_llama_trains_on_text_and_its_sampled_networks_generate_with_the_trained_tokenizer(
    tmp_path, text_directory, fresh_accelerate_state
):
    """Issue 24: `train.py` on a text recipe trains a stock Llama as the base, then the pipeline over its
    feed-forward width; every sampled width models the text far better than chance, and the saved network
    carries the tokenizer that cut the text, so transformers' own pipeline generates with it."""
    result = train_script.train(tiny_llama_recipe(tmp_path, text_directory))
    run = tmp_path / "run"
    assert result["metric"] == "perplexity"
    perplexity = {r["width"]: r["perplexity"] for r in result["results"]}
    base = result["base"]["perplexity"]
    assert base < VOCABULARY / 4  # chance (a uniform guess) is the vocabulary size
    assert all(value < VOCABULARY / 3 for value in perplexity.values()), perplexity
    assert perplexity[64] < 1.05 * base and perplexity[16] > perplexity[64]  # width buys perplexity
    assert {r["width"]: r["seen_in_training"] for r in result["results"]}[24] is False
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("validation_perplexity/width_64" in r for r in records)  # decided on validation, not test
    for name in ("base/tokenizer.json", "hypernetwork/tokenizer.json", "hypernetwork/continuations.png",
                 "sampled-width-24/tokenizer.json", "sampled-width-24/continuations.png"):  # fmt: skip
        assert (run / name).is_file(), name
    card = (run / "sampled-width-24" / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "perplexity" in card
    network = transformers.AutoModelForCausalLM.from_pretrained(run / "sampled-width-24")
    assert type(network) is transformers.LlamaForCausalLM and network.config.intermediate_size == 24
    tokenizer = transformers.AutoTokenizer.from_pretrained(run / "sampled-width-24")
    assert len(tokenizer) == VOCABULARY and tokenizer.decode(tokenizer("def f(x):\n")["input_ids"]) == "def f(x):\n"
    generate = transformers.pipeline("text-generation", model=str(run / "sampled-width-24"))
    text = generate("import os\n", max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith("import os\n") and len(text) > len("import os\n")
    hyper = nm.NeuMetaModel.from_pretrained(run / "hypernetwork")
    assert hyper.preprocessor.get_vocab() == tokenizer.get_vocab()  # what every network it samples gets


def test_a_text_recipe_takes_text_data_keys_only(tmp_path):
    config = load_config(RECIPE)
    assert isinstance(config.data, TextDataConfig) and config.data.name == "shakespeare"
    with pytest.raises(ValueError, match="Unknown key\\(s\\) data.image_size; valid keys here: name, text_column"):
        load_config(RECIPE, ["data.image_size=28"])
    with pytest.raises(ValueError, match="data.block_size must be a positive integer, got 0"):
        load_config(RECIPE, ["data.block_size=0"])
    with pytest.raises(ValueError, match="mixup_alpha blends images"):
        load_config(RECIPE, ["training.mixup_alpha=0.2"])


def test_a_block_longer_than_the_base_context_is_refused_before_training(tmp_path, text_directory,
                                                                           fresh_accelerate_state):  # fmt: skip
    config = tiny_llama_recipe(tmp_path, text_directory, "data.block_size=48")
    with pytest.raises(ValueError, match="data.block_size=48 tokens is longer than the base network's context of 32"):
        train_script.set_up(config)
    assert not (tmp_path / "run" / "base").exists()


def test_a_pretrained_language_model_is_fed_through_its_own_tokenizer(tmp_path):
    config = load_config(RECIPE, [f"base.pretrained={tmp_path}"])
    adopt_base_preprocessing(config)
    assert config.data.tokenizer == str(tmp_path)  # not a tokenizer trained afresh, whose ids it would not know
    config = load_config(RECIPE, [f"base.pretrained={tmp_path}", "data.tokenizer=gpt2"])
    adopt_base_preprocessing(config)
    assert config.data.tokenizer == "gpt2"


TIED_LANGUAGE_MODELS = {  # tied input and output embeddings: one tensor under two names
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=True)),
    "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=50, n_embd=16, n_inner=64, n_layer=2, n_head=2, n_positions=16)),
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(TIED_LANGUAGE_MODELS))
def test_nested_widths_of_a_language_model_compute_their_standalone_networks(model_type):
    """The nested stage and the MatFormer baseline run a width through `functional_call` on a meta skeleton: tied
    embeddings were handed over as two tensors (refused), Llama's rotary frequencies (a non-persistent buffer)
    not at all (a meta tensor)."""
    torch.manual_seed(0)
    base = TIED_LANGUAGE_MODELS[model_type]().eval()
    base.config.architectures = [type(base).__name__]  # what a saved network records
    nested = NestedNetwork(base, [16, 32])
    tokens = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        through_skeleton = nested(24, tokens).logits
        standalone = nested.network_at(24)(tokens).logits
    torch.testing.assert_close(through_skeleton, standalone)
    loss = SlimmableObjective((16, 64), seed=0)(base.train(), tokens, tokens)
    loss.backward()
    assert torch.isfinite(loss) and base.get_input_embeddings().weight.grad.abs().sum() > 0
