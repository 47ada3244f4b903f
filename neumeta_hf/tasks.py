"""What a task is, in one place: the pipeline task a target network serves and everything neumeta-hf does
differently for it.

A `Task` says
* the Auto class that loads such a network and the pipeline tag its card carries;
* the output the network returns: a `ModelOutput` with `logits` whose axis 1 runs over the classes
  (`[N, classes]` for image classification, `[N, classes, H, W]` per pixel for semantic segmentation), a
  VAE's negative ELBO, reconstruction and posterior for image generation, or a causal language model's
  next-token `logits` `[N, T, vocabulary]` for text generation;
* the task loss against the data's `labels` and the distillation loss between a generated network and the base
  (KL divergence of the class distributions at every output position; for a VAE, of posteriors and decoders),
  with any inputs the two must share (`shared_inputs`: a VAE's latent noise);
* the scores it reports (`metrics`), computed through the `evaluate` modules shipped in `neumeta_hf/metrics`;
  the first is the main one, which sweeps, plots and benchmark tables show: its name in prose
  (`metric_label`), its direction (`higher_is_better`) and how tables show it (`scale`, `unit`);
* the pictures a sweep draws of what its networks make (`pictures`, `draw_pictures`);
* the tolerances its benchmark targets allow (`targets`: `BenchmarkTargets`);
* what the permutation's function check compares (`function_output`).

The loss of the tasks that predict classes is `families.modeling_common.class_cross_entropy`: it lives in a
file that travels with every saved network, so that the networks' own `forward` computes the same loss.
`targets.task_for(config)` gives a target network's task: a family's model class names it (`task`), a stock
transformers model's follows from its architecture.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
import transformers

from .families.modeling_common import IGNORE_INDEX, class_cross_entropy

METRICS_DIR = Path(__file__).parent / "metrics"  # `evaluate.load("accuracy")` would need the Hub
# How metrics read in tables and plots, where their key does not say it already.
METRIC_NAMES = {"mean_iou": "mean IoU", "top5_accuracy": "top-5 accuracy", "nll": "negative log-likelihood",
                "nll_per_token": "negative log-likelihood per token"}


def metric_name(metric: str) -> str:
    """How a metric reads in tables and plots: `mean_iou` -> "mean IoU"."""
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


@dataclass(frozen=True)
class BenchmarkTargets:
    """How far the quality benchmark (`benchmarks/quality.py`) lets NeuMeta be from each reference, in the main
    metric's own values (fractions for accuracy and IoU, nats for likelihoods)."""

    individual: float  # at most this much worse than the individual network at every width it has
    smoothness: float  # a width at most this much worse than the mean of its two neighbours
    full_width: float | None = None  # at full width at most this much worse than the base network
    # At least this much better than L1 pruning at 75% compression; None: better at every width below full.
    pruning_margin_at_quarter: float | None = None


class Task:
    """A pipeline task: its Auto class and pipeline tag, loss, distillation target, metrics and function check.

    The base class serves tasks neumeta-hf only samples networks for (stock text models): logits compared,
    cross-entropy over axis 1, no bundled metrics.
    """

    metrics: tuple[str, ...] = ()
    higher_is_better = True  # of the main metric
    scale, unit = 100.0, "%"  # the main metric in tables and plots: fractions shown in %
    ignore_index: int = -100  # a label that counts for no class
    class_axis = 1  # of the logits: [N, classes, ...]; a language model's are [N, tokens, vocabulary]
    relative_gain = False  # differences of the main metric in its own units (see `gain`)
    pictures: ClassVar[dict[str, str]] = {}  # what `draw_pictures` writes: file name -> the caption cards give it
    targets: BenchmarkTargets | None = None

    def __init__(self, name: str, auto_class_name: str, input_name: str = "pixel_values"):
        # The batch column a network of this task is fed with (its first argument): images, or token ids.
        self.name, self.auto_class_name, self.input_name = name, auto_class_name, input_name

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def metric_label(self) -> str:
        return metric_name(self.main_metric)

    def gain(self, value: float, reference: float) -> float:
        """How much better `value` is than `reference` (negative: worse), whichever way the main metric runs; a
        fraction of `reference` where the metric compares by ratios (`relative_gain`: perplexity)."""
        difference = value - reference if self.higher_is_better else reference - value
        return difference / reference if self.relative_gain else difference

    @property
    def auto_class(self):
        return getattr(transformers, self.auto_class_name)

    def loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        """The task loss of a network's output: cross-entropy of its logits over axis 1 against class indices (or
        class probabilities, e.g. mixed-up labels)."""
        return class_cross_entropy(output.logits, targets, self.ignore_index)

    def distillation(self, output, teacher_output, temperature: float) -> torch.Tensor:
        """How far a generated network's output is from the base network's: KL(teacher || student) of the
        temperature-softened class distributions, averaged over examples and output positions, times
        temperature^2 (Hinton et al., 2015)."""
        logits = output.logits
        positions = logits.numel() // logits.shape[1]
        divergence = F.kl_div(
            F.log_softmax(logits / temperature, 1),
            F.log_softmax(teacher_output.logits / temperature, 1),
            log_target=True,
            reduction="sum",
        )
        return divergence / positions * temperature**2

    def shared_inputs(self, config, inputs: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Extra inputs of a network with `config` that the generated network and the base network it distils
        from must share in a step on a batch of `inputs` (a VAE's posterior noise); none for discriminative
        tasks."""
        return {}

    def label_count(self, config) -> int:
        """How many values a label may take (checked against the data before a sweep or training): the classes."""
        return config.num_labels

    def function_output(self, outputs) -> torch.Tensor:
        """What must not change when hidden channels are permuted: the logits, or a headless model's (`BertModel`)
        last hidden states."""
        return outputs["logits"] if "logits" in outputs else outputs.last_hidden_state

    def evaluate(self, model, dataset, batch_size: int = 512, device=None) -> dict[str, float]:
        raise NotImplementedError(f"neumeta-hf does not evaluate {self.name} networks")

    def draw_pictures(self, networks: dict, batch: dict, config, directory: Path) -> list[str]:
        """Draw into `directory` what `networks` (caption -> sampled network) make of `batch` (a few test
        examples) and return the names written (`pictures`); none by default."""
        return []

    @staticmethod
    def load_metric(name: str):
        """One of the metric modules bundled in `neumeta_hf/metrics`, loaded from its file."""
        import evaluate  # imported here: it costs ~0.9 s, which `import neumeta_hf` need not pay

        if not (METRICS_DIR / name / f"{name}.py").is_file():
            bundled = sorted(path.name for path in METRICS_DIR.iterdir() if path.is_dir())
            raise ValueError(f"Unknown metric {name!r}; bundled metrics: {', '.join(bundled)}")
        return evaluate.load(str(METRICS_DIR / name))


class ImageClassification(Task):
    metrics = ("accuracy", "top5_accuracy")
    targets = BenchmarkTargets(individual=0.005, smoothness=0.010, full_width=0.003)

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size: int = 512, device=None) -> dict[str, float]:
        """Accuracy and top-5 accuracy (fractions) on a dataset with `pixel_values` and `labels`."""
        device = device or next(model.parameters()).device
        metrics = {name: self.load_metric(name) for name in self.metrics}
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            logits = model(batch["pixel_values"].to(device)).logits.float().cpu()
            ranked = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
            metrics["accuracy"].add_batch(predictions=ranked[:, 0], references=batch["labels"])
            metrics["top5_accuracy"].add_batch(predictions=ranked.tolist(), references=batch["labels"])
        return {name: metric.compute()[name] for name, metric in metrics.items()}


class SemanticSegmentation(Task):
    metrics = ("mean_iou", "pixel_accuracy")
    ignore_index = IGNORE_INDEX
    pictures: ClassVar[dict[str, str]] = {
        "predictions.png": "Test inputs, their ground truth and the predictions of networks sampled at 75%, 50% "
        "and 25% compression and at full width"
    }
    targets = BenchmarkTargets(individual=0.010, smoothness=0.010, pruning_margin_at_quarter=0.10)

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size: int = 512, device=None) -> dict:
        """Mean IoU over the classes, pixel accuracy (fractions) and per-class IoU on a dataset with
        `pixel_values` and per-pixel `labels` ([H, W] class indices; `IGNORE_INDEX` counts for none)."""
        device = device or next(model.parameters()).device
        metric = self.load_metric("mean_iou")
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            logits = model(batch["pixel_values"].to(device)).logits.float()
            labels = batch["labels"]
            if logits.shape[-2:] != labels.shape[-2:]:
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            metric.add_batch(predictions=logits.argmax(1).cpu().numpy(), references=labels.numpy())
        scores = metric.compute(num_labels=model.config.num_labels, ignore_index=self.ignore_index)
        # A class in neither maps has no IoU: None rather than NaN, which JSON cannot hold.
        scores["per_category_iou"] = [None if math.isnan(iou) else iou for iou in scores["per_category_iou"]]
        return scores

    def draw_pictures(self, networks, batch, config, directory):
        """Four inputs, their ground truth and each network's predictions (`predictions.png`)."""
        from .plots import plot_segmentations

        predictions = {caption: net(batch["pixel_values"]).logits.argmax(1) for caption, net in networks.items()}
        plot_segmentations(
            batch["pixel_values"][:4], batch["labels"][:4], predictions, config.id2label,
            directory / "predictions.png", image_mean=config.image_mean, image_std=config.image_std,
        )  # fmt: skip
        return ["predictions.png"]


class ImageGeneration(Task):
    """Unconditional image generation by a VAE whose forward returns the negative ELBO as `loss`, the posterior
    (`posterior_mean`, `posterior_logvar`) and the reconstruction's Bernoulli `logits`, with `posterior(x)` and
    `decode(z)` methods (the `neumeta-vae` family). Likelihoods are in nats per image; lower is better."""

    metrics = ("nll", "negative_elbo")
    higher_is_better = False
    scale, unit = 1.0, "nats"
    num_importance_samples = 100  # per image for sweeps and evaluation during training; final tables use 1000
    pictures: ClassVar[dict[str, str]] = {
        "samples.png": "Images decoded from the same latents by networks sampled at 75%, 50% and 25% compression "
        "and at full width (one row each)",
        "reconstructions.png": "Test images (top row) and their reconstructions by networks sampled at several "
        "widths",
    }
    targets = BenchmarkTargets(individual=1.0, smoothness=1.0)

    def loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        """The network's own negative ELBO of its inputs (the data's labels are not used)."""
        return output.loss

    def distillation(self, output, teacher_output, temperature: float) -> torch.Tensor:
        """KL(base posterior || generated posterior) plus the KL between the two decoders' Bernoulli pixels, both
        summed per image and averaged over the batch; the two networks decode the same posterior noise
        (`shared_inputs`). `temperature` does not apply."""
        mean, logvar = output.posterior_mean, output.posterior_logvar
        teacher_mean, teacher_logvar = teacher_output.posterior_mean, teacher_output.posterior_logvar
        posterior = 0.5 * (
            logvar - teacher_logvar + (teacher_logvar.exp() + (teacher_mean - mean) ** 2) / logvar.exp() - 1
        ).sum(1)
        teacher_pixels = torch.sigmoid(teacher_output.logits)
        pixels = F.binary_cross_entropy_with_logits(output.logits, teacher_pixels, reduction="none")
        pixels = pixels - F.binary_cross_entropy_with_logits(teacher_output.logits, teacher_pixels, reduction="none")
        return (posterior + pixels.flatten(1).sum(1)).mean()

    def shared_inputs(self, config, inputs: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """The posterior noise both networks decode with in a distillation step."""
        shape = (inputs.shape[0], config.latent_size)
        noise = torch.randn(shape, generator=generator, device=inputs.device, dtype=inputs.dtype)
        return {"latent_noise": noise}

    def function_output(self, outputs) -> torch.Tensor:
        """The deterministic outputs (eval mode decodes the posterior mean): posterior and reconstruction."""
        return torch.cat([outputs.posterior_mean, outputs.posterior_logvar, outputs.logits.flatten(1)], 1)

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size: int = 512, device=None, num_importance_samples=None) -> dict:
        """Test negative log-likelihood in nats per image, estimated by importance sampling with the posterior as
        proposal (Burda et al., 2016: K samples per image, `num_importance_samples`), and the negative ELBO, on a
        dataset of binarised `pixel_values` in {0, 1}."""
        device = device or next(model.parameters()).device
        samples = num_importance_samples or self.num_importance_samples
        metric = self.load_metric("nll")
        normal = torch.distributions.Normal(0.0, 1.0)
        for batch in torch.utils.data.DataLoader(dataset, batch_size=max(1, batch_size // 8)):
            pixels = batch["pixel_values"].to(device)
            mean, logvar = model.posterior(pixels)
            noise = torch.randn(samples, *mean.shape, device=device, generator=self._generator(device))
            latents = mean + (0.5 * logvar).exp() * noise  # [K, N, L]
            logits = model.decode(latents.flatten(0, 1)).view(samples, *pixels.shape)
            likelihood = -F.binary_cross_entropy_with_logits(
                logits, pixels.expand_as(logits), reduction="none"
            ).flatten(2).sum(2)
            prior = normal.log_prob(latents).sum(2)
            proposal = (normal.log_prob(noise) - 0.5 * logvar).sum(2)
            metric.add_batch(log_weights=(likelihood + prior - proposal).T.double().cpu().numpy())
        return metric.compute()

    def draw_pictures(self, networks, batch, config, directory):
        """Images decoded from the same latents (`samples.png`) and reconstructions of `batch`
        (`reconstructions.png`)."""
        from .plots import plot_image_grid

        latents = torch.randn(len(batch["pixel_values"]), config.latent_size, generator=self._generator("cpu"))
        samples = {caption: net.decode(latents).sigmoid() for caption, net in networks.items()}
        reconstructions = {"test images": batch["pixel_values"]}
        reconstructions |= {caption: net(batch["pixel_values"]).logits.sigmoid() for caption, net in networks.items()}
        plot_image_grid(samples, directory / "samples.png")
        plot_image_grid(reconstructions, directory / "reconstructions.png")
        return ["samples.png", "reconstructions.png"]

    @staticmethod
    def _generator(device) -> torch.Generator:
        # The same importance samples for every network evaluated: differences between widths are not noise.
        return torch.Generator(device).manual_seed(0)


class TextGeneration(Task):
    """Causal language modelling by a stock transformers model whose output `logits` are [N, T, vocabulary]: each
    position predicts the next token. Perplexity is token-weighted over every token of a block but its first;
    lower is better."""

    metrics = ("perplexity", "nll_per_token")
    higher_is_better = False
    class_axis = -1
    relative_gain = True  # perplexities compare by ratio: 2 % worse reads the same at 30 as at 300
    # Issue 24: within 2 % of the individual network's perplexity, no width 1 % worse than its neighbours' mean,
    # the full width within 0.5 % of the base.
    targets = BenchmarkTargets(individual=0.02, smoothness=0.01, full_width=0.005)
    scale, unit = 1.0, ""
    prompt_tokens, continuation_tokens = 16, 40
    # Blocks per evaluation batch at most: the logits are [blocks, tokens, vocabulary], 1 GB for 32 blocks of 256
    # tokens over 32k tokens, where an image batch of 512 is a few MB.
    max_eval_blocks = 32
    pictures: ClassVar[dict[str, str]] = {
        "continuations.png": "The opening of a test text continued greedily by networks sampled at 75%, 50% and 25% "
        "compression and at full width",
    }

    def label_count(self, config) -> int:
        """Labels are next tokens: any id of the vocabulary."""
        return config.vocab_size

    def loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each position's prediction against the next token (`targets`: the blocks' labels)."""
        return class_cross_entropy(output.logits[:, :-1].transpose(1, 2), targets[:, 1:], self.ignore_index)

    def distillation(self, output, teacher_output, temperature: float) -> torch.Tensor:
        """Per-token KL(teacher || student) over the vocabulary, temperature-softened, averaged over tokens."""
        student, teacher = (o.logits.movedim(self.class_axis, 1) for o in (output, teacher_output))
        return super().distillation(type(output)(logits=student), type(output)(logits=teacher), temperature)

    @torch.no_grad()
    def evaluate(self, model, dataset, batch_size: int = 32, device=None) -> dict[str, float]:
        """Perplexity and negative log-likelihood per token (nats) on a dataset of `input_ids` blocks and their
        `labels`."""
        device = device or next(model.parameters()).device
        metric = self.load_metric("perplexity")
        batch_size = min(batch_size, self.max_eval_blocks)
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            logits = model(input_ids=batch["input_ids"].to(device)).logits[:, :-1].float()
            labels = batch["labels"][:, 1:].to(device)
            nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=self.ignore_index, reduction="none")
            tokens = (labels != self.ignore_index).sum(1)
            metric.add_batch(nll=nll.sum(1).double().cpu().tolist(), tokens=tokens.cpu().tolist())
        scores = metric.compute()
        return {name: scores[name] for name in self.metrics}

    @torch.no_grad()
    def draw_pictures(self, networks, batch, config, directory):
        """`continuations.png`: the first `prompt_tokens` of the first block of `batch`, then each network's greedy
        continuation, decoded by the tokenizer the networks carry (none without one)."""
        from .plots import plot_text_rows

        tokenizer = getattr(next(iter(networks.values())), "preprocessor", None)
        if tokenizer is None:
            return []
        prompt = batch["input_ids"][:1, : self.prompt_tokens]
        rows = {"prompt": tokenizer.decode(prompt[0])}
        for caption, network in networks.items():
            generated = network.generate(prompt, max_new_tokens=self.continuation_tokens, do_sample=False,
                                         pad_token_id=tokenizer.eos_token_id)  # fmt: skip
            rows[caption] = tokenizer.decode(generated[0, prompt.shape[1] :])
        plot_text_rows(rows, directory / "continuations.png")
        return ["continuations.png"]


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        ImageClassification("image-classification", "AutoModelForImageClassification"),
        SemanticSegmentation("image-segmentation", "AutoModelForSemanticSegmentation"),
        ImageGeneration("unconditional-image-generation", "AutoModel"),
        Task("text-classification", "AutoModelForSequenceClassification", "input_ids"),
        TextGeneration("text-generation", "AutoModelForCausalLM", "input_ids"),
        Task("fill-mask", "AutoModelForMaskedLM", "input_ids"),
    )
}


# Every picture any task draws, by file name, with its caption.
PICTURES = {name: caption for task in TASKS.values() for name, caption in task.pictures.items()}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def auto_class(task_name: str):
    """The transformers Auto class that loads a network of this task."""
    return get_task(task_name).auto_class


def task_of_metric(metric: str) -> Task:
    """The task whose main metric is `metric` (what a sweep or benchmark report records)."""
    return next(task for task in TASKS.values() if task.metrics and task.main_metric == metric)
