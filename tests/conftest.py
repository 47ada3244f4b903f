import atexit
import os
import shutil
import tempfile

# The Hub is unreachable here: nothing in the suite may try it (set before any HF library is imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# What the suite converts, composes or fetches is cached in a directory of its own, removed at the end, never in
# the user's cache (~/.cache/neumeta_hf), which tests would otherwise fill with caches of their temporary files.
CACHE = tempfile.mkdtemp(prefix="neumeta-hf-test-cache-")
os.environ["NEUMETA_HF_CACHE"] = CACHE
atexit.register(shutil.rmtree, CACHE, ignore_errors=True)

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import neumeta_hf as nm  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The `training` package (recipe, train_base, train) sits at the repository root, beside the library.
sys.path.insert(0, str(REPO))

from fake_hub import FakeHub  # noqa: E402

from training.recipe import load_config  # noqa: E402

SMALL_INR = {"hidden_size": 32, "num_layers": 2, "num_frequencies": 4, "size_frequencies": 2}


def random_base(config, seed=0):
    """A family network with every tensor random (BatchNorm statistics included), in eval mode."""
    torch.manual_seed(seed)
    model = nm.FAMILIES[config.model_type](config)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_(0.0, 0.3)
    return model.eval()


def tensors(model):
    """Every parameter and buffer of `model` by name."""
    return dict(model.named_parameters()) | dict(model.named_buffers())


def permute(model, groups, order_for, skip=None):
    """Permute each channel group's channels in every member slice (but `skip`), in place, by `order_for(size)`."""
    state = tensors(model)
    with torch.no_grad():
        for group in groups:
            size = group.members[0].length(state[group.members[0].tensor].shape)
            order = order_for(size)
            for member in group.members:
                if member != skip:
                    channels = member.of(state[member.tensor])
                    assert channels.shape[member.axis] == size, (group.name, member)
                    channels.copy_(channels.index_select(member.axis, order))


def assert_groups_cover(model, hidden: set):
    """Every member of `model`'s channel groups is a well-formed slice as long as its group, and together they
    cover each (tensor, axis) of `hidden`, and nothing else, channel by channel exactly once."""
    state = tensors(model)
    covered = {}
    for group in model.channel_groups():
        first = group.members[0]
        size = state[first.tensor].shape[first.axis]
        for member in group.members:
            length = state[member.tensor].shape[member.axis]
            stop = length if member.stop is None else member.stop
            assert 0 <= member.start < stop <= length and stop - member.start == size, (group.name, member)
            counts = covered.setdefault((member.tensor, member.axis), torch.zeros(length, dtype=torch.long))
            counts[member.start : stop] += 1
    assert set(covered) == hidden
    for key, counts in covered.items():
        assert torch.all(counts == 1), key


def inputs_for(config, n=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, config.num_channels, config.image_size, config.image_size, generator=generator)


@pytest.fixture(scope="session")
def mlp_hyper():
    """A small-INR MLP hypernetwork over widths 16-64 (digits-shaped inputs), built around a random base."""
    return nm.NeuMetaModel.from_base_model(
        random_base(nm.NeuMetaMLPConfig()), width_range=(16, 64), train_widths=[16, 32, 48, 64], **SMALL_INR
    )




def reset_accelerate_state():
    """Forget accelerate's process-wide state, so that the next in-process run starts afresh."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def fresh_accelerate_state():
    yield
    reset_accelerate_state()


def write_idx_dataset(directory, images, labels):
    """MNIST-format IDX files (gzipped) for both splits: the layout of Debian's dataset-fashion-mnist."""
    import gzip
    import struct

    for prefix in ("train", "t10k"):
        with gzip.open(directory / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">HBB3I", 0, 8, 3, *images.shape) + images.tobytes())
        with gzip.open(directory / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
            handle.write(struct.pack(">HBBI", 0, 8, 1, len(labels)) + labels.tobytes())


def save_as_trained(hyper, directory):
    """`hyper.save_pretrained(directory)` with the config recording training steps, as training/train.py's does
    (from_base_model's is untrained, which push refuses)."""
    hyper.save_pretrained(directory)
    config = json.loads((Path(directory) / "config.json").read_text())
    (Path(directory) / "config.json").write_text(json.dumps(config | {"trained_steps": 100}))


def trained_like(hyper):
    """A copy whose INR output layer is non-zero, as after training (an untrained one outputs zero)."""
    copy = nm.NeuMetaModel(hyper.config.__class__.from_dict(hyper.config.to_dict() | {"trained_steps": 100}))
    copy.load_state_dict(hyper.state_dict())
    copy.preprocessor = hyper.preprocessor
    torch.nn.init.normal_(copy.inr.output_weight, generator=torch.Generator().manual_seed(0), std=0.1)
    return copy


# ------------------------------------------------------------------------ training recipes (digits, short)

DIGITS = str(REPO / "training" / "configs" / "digits_mlp.yaml")
# A few real steps of the paper's plain method on the digits recipe (whose default is the nested pipeline: the
# tests that need it enable it, with a short nested stage).
QUICK = [
    "nested.enabled=false",
    "training.learning_rate=2.0e-3",
    "base.epochs=3",
    "training.max_steps=120",
    "training.warmup_steps=5",
    "training.checkpoint_every=60",
    "training.eval_every=60",
    "training.batch_size=64",
    "hypernetwork.config.hidden_size=32",
    "sweep.widths=[32,33,64]",
]


def quick_config(tmp_path, *extra):
    return load_config(DIGITS, [f"output_dir={tmp_path}", *QUICK, *extra])


# --------------------------------------------------- the Hub (faked at the HTTP level) and clean processes


@pytest.fixture
def hub():
    """An in-process fake of the Hub's HTTP API, which records what arrives (the real Hub is unreachable)."""
    fake = FakeHub()
    yield fake
    fake.close()


def run(arguments, hub, tmp_path, code=None, **variables):
    """The neumeta-hf CLI with `arguments` (or Python `code`) in a subprocess pointed at the fake `hub`
    (huggingface_hub reads HF_ENDPOINT when imported), with environment `variables` added."""
    environment = {key: value for key, value in os.environ.items() if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    environment |= {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_fake", "HF_HOME": str(tmp_path / "hf-home"),
                    "HF_HUB_DISABLE_TELEMETRY": "1", **variables}  # fmt: skip
    command = [sys.executable, "-c", code, *arguments] if code else [sys.executable, "-m", "neumeta_hf.cli", *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300)


def card_metadata(readme: bytes) -> dict:
    _, front, _ = readme.decode().split("---", 2)
    return yaml.safe_load(front)


BLOCK_NEUMETA = r"""
import importlib.abc, json, sys

class BlockNeuMeta(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "neumeta_hf":
            raise ImportError("neumeta_hf is deliberately unavailable in this process")

sys.meta_path.insert(0, BlockNeuMeta())
"""

LOAD_WITHOUT_NEUMETA = BLOCK_NEUMETA + r"""
import numpy as np, torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

directory = sys.argv[1]
model = AutoModelForImageClassification.from_pretrained(directory, trust_remote_code=True)
inputs = torch.from_numpy(np.load(directory + "/inputs.npy"))
classify = pipeline("image-classification", model=directory, trust_remote_code=True)
image = Image.open(directory + "/digit.png")
print(json.dumps({
    "module": type(model).__module__,
    "width": model.config.width,
    "logits": model(inputs).logits.tolist(),
    "pipeline": classify(image, top_k=1)[0],
}))
"""


def run_in_clean_process(code: str, directory) -> dict:
    """Run `code` on a saved network's directory in a fresh interpreter; the JSON it prints last."""
    environment = {**os.environ, "HF_MODULES_CACHE": str(directory / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", code, str(directory)],
        capture_output=True,
        text=True,
        cwd=directory,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
