"""Quality benchmark: NeuMeta against networks trained individually at each width and against L1 pruning,
with ablations, all on the same data splits.

    python benchmarks/quality.py                        # Fashion-MNIST, LeNet widths 8-32
    python benchmarks/quality.py --recipe digits_mlp    # the embedded default: digits, MLP widths 32-64

Runs, as subprocesses of this one (two at a time on two cores, one thread each):
  base        the full-width network, trained with the recipe's `base` settings (training/train_base.py);
  individual  the same recipe from scratch at each of a few smaller widths (the full width is the base: same
              recipe, same seed, so the same network);
  neumeta     training/train.py around that base, morph "all", trained on the recipe's `train_widths` and
              swept over every width of the range (widths outside `train_widths` are unseen);
  ablations   full NeuMeta runs without the channel permutation, without coordinate noise, and with a shared
              INR trunk instead of per-tensor heads; plus the main run sampled with num_samples 1 and 100.
Then, in this process: pruned_l1 (the base pruned to every width by filter L1 norm, no fine-tuning), the
targets, and OUTPUT_DIR/RECIPE.json, .md and .png (default OUTPUT_DIR: benchmarks/results).

Fashion-MNIST comes from Debian's `dataset-fashion-mnist` (installed with apt-get when missing and running as
root), from `--data-dir` (a directory of IDX files), or from the Hub (`--data-dir zalando-datasets/fashion_mnist`).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training"))

from recipe import load_config  # noqa: E402

from neumeta_hf import NeuMetaModel  # noqa: E402
from neumeta_hf.data import FASHION_MNIST_DIR, load_splits  # noqa: E402
from neumeta_hf.evaluation import evaluate_accuracy, sweep  # noqa: E402
from neumeta_hf.families import family_model_class  # noqa: E402
from neumeta_hf.progress import progress_bar  # noqa: E402
from neumeta_hf.pruning import prune_l1  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    config: str  # the training recipe both the baselines and NeuMeta use
    individual_widths: tuple[int, ...]


RECIPES = {
    "fashion_mnist_lenet": Recipe("training/configs/fashion_mnist_lenet.yaml", (8, 12, 16, 24, 32)),
    "digits_mlp": Recipe("training/configs/digits_mlp.yaml", (32, 40, 48, 56, 64)),
}

# Each ablation is a full NeuMeta run with these overrides on top of the recipe.
ABLATIONS = {
    "no_permutation": ["hypernetwork.smooth=false"],
    "no_coordinate_noise": ["hypernetwork.config.coordinate_noise=0"],
    "shared_trunk": ["hypernetwork.config.shared_trunk=true"],
}
SAMPLE_COUNTS = (1, 100)  # the num_samples ablation: the main run sampled both ways

# The targets (accuracy points are fractions here).
FULL_WIDTH_TOLERANCE = 0.003  # NeuMeta at full width vs the base network
INDIVIDUAL_TOLERANCE = 0.005  # NeuMeta vs the network trained individually at that width
PRUNING_MARGIN = 0.10  # NeuMeta above L1 pruning at the smallest width
UNSEEN_TOLERANCE = 0.005  # an unseen width vs the mean of its seen neighbours


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="fashion_mnist_lenet")
    parser.add_argument("--data-dir", help="data.name for every run: a directory of IDX files or a Hub dataset id")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"), help="where RECIPE.json/.md/.png go (default: benchmarks/results)")
    parser.add_argument("--work-dir", help="where the runs write their networks (default: outputs/quality/RECIPE)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="key=value", help="recipe overrides for every run, e.g. base.epochs=2"
    )
    args = parser.parse_args(argv)

    started = time.time()
    recipe = RECIPES[args.recipe]
    overrides = list(args.set) + ([f"data.name={args.data_dir}"] if args.data_dir else [])
    config = load_config(REPO / recipe.config, overrides)
    if config.data.name == "fashion_mnist":
        ensure_fashion_mnist()
    output = Path(args.output_dir)
    work = Path(args.work_dir or REPO / "outputs" / "quality" / args.recipe)
    work.mkdir(parents=True, exist_ok=True)
    full_width = family_model_class(config.base.family).config_class.full_width
    low, high = config.hypernetwork.width_range

    runs = Runs(REPO / recipe.config, overrides, work, args.jobs)
    base_dir = work / "base" / "base"
    runs.submit("base", "train_base.py", [f"output_dir={work / 'base'}"])
    widths = [w for w in recipe.individual_widths if w != full_width]
    for width in sorted(widths, reverse=True):  # longest first, so that two workers finish together
        family = [f"base.family_config.width={width}", "base.family_config.morph=all"]
        runs.submit(f"individual_{width}", "train_base.py", [f"output_dir={work / f'individual_{width}'}", *family])
    for name, extra in {"neumeta": [], **ABLATIONS}.items():
        runs.submit(
            name, "train.py", [f"output_dir={work / name}", f"base.pretrained={base_dir}", *extra], after="base"
        )
    runs.wait()

    _, test, info = load_splits(config.data)
    model_class = family_model_class(config.base.family)
    base = model_class.from_pretrained(base_dir)
    individual = {full_width: evaluate_accuracy(base, test)}
    for width in widths:
        individual[width] = evaluate_accuracy(model_class.from_pretrained(work / f"individual_{width}" / "base"), test)
    pruned = {w: evaluate_accuracy(prune_l1(base, w), test) for w in progress_bar(range(low, high + 1), desc="pruned_l1")}
    ablations = {name: swept(work / name) for name in ABLATIONS}
    hyper = NeuMetaModel.from_pretrained(work / "neumeta" / "hypernetwork")
    for count in SAMPLE_COUNTS:
        result = sweep(hyper, test, range(low, high + 1), num_samples=count)
        ablations[f"num_samples_{count}"] = {r["width"]: r["accuracy"] for r in result["results"]}

    report = {
        "dataset": info.name,
        "family": config.base.family,
        "full_width": full_width,
        "seen_widths": hyper.config.train_widths,
        "num_samples": hyper.config.num_samples,
        "methods": {
            "base": individual[full_width],
            "individual": dict(sorted(individual.items())),
            "pruned_l1": pruned,
            "neumeta": swept(work / "neumeta"),
        },
        "ablations": ablations,
        "inr_parameters": sum(p.numel() for p in hyper.inr.parameters()),
        "base_parameters": base.num_parameters(),
        "recipe": recipe.config,
        "overrides": list(args.set),
        "wall_seconds": {**runs.seconds, "total": round(time.time() - started, 1)},
    }
    report["targets"] = check_targets(report)
    paths = write_report(report, output / args.recipe)
    print(markdown(report))
    print("Wrote " + ", ".join(str(p) for p in paths))


class Runs:
    """Training scripts run as subprocesses, `jobs` at a time, each logging to WORK/logs/NAME.log."""

    def __init__(self, config: Path, overrides: list[str], work: Path, jobs: int):
        self.config, self.overrides, self.work = config, overrides, work
        self.pool = ThreadPoolExecutor(max_workers=jobs)
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.futures, self.seconds = {}, {}
        (work / "logs").mkdir(exist_ok=True)

    def submit(self, name: str, script: str, overrides: list[str], after: str | None = None):
        dependency = self.futures.get(after)
        self.futures[name] = self.pool.submit(self._run, name, script, overrides, dependency)

    def _run(self, name, script, overrides, dependency):
        if dependency is not None:
            dependency.result()  # raises if what this run needs failed
        command = [sys.executable, str(REPO / "training" / script), "--config", str(self.config)]
        # The work directory is the benchmark's own: each run replaces the previous benchmark's.
        command += self.overrides + overrides + ["overwrite_output_dir=true"]
        environment = os.environ | {"OMP_NUM_THREADS": str(self.threads), "TQDM_MININTERVAL": "30"}
        log = self.work / "logs" / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: started (log: {log})", flush=True)
        started = time.time()
        with log.open("w") as stream:
            code = subprocess.call(command, stdout=stream, stderr=subprocess.STDOUT, env=environment, cwd=REPO)
        self.seconds[name] = round(time.time() - started, 1)
        if code != 0:
            raise RuntimeError(f"{name} failed (exit {code}); see {log}:\n{log.read_text()[-2000:]}")
        print(f"[{time.strftime('%H:%M:%S')}] {name}: done in {self.seconds[name]:.0f}s", flush=True)

    def wait(self):
        for future in self.futures.values():
            future.result()
        self.pool.shutdown()


def swept(run: Path) -> dict[int, float]:
    """{width: accuracy} from a NeuMeta run's sweep.json."""
    return {r["width"]: r["accuracy"] for r in json.loads((run / "sweep.json").read_text())["results"]}


def ensure_fashion_mnist():
    """Install Debian's dataset-fashion-mnist when it is missing and we may (root with apt-get)."""
    if Path(FASHION_MNIST_DIR).is_dir():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(
            f"Fashion-MNIST is not in {FASHION_MNIST_DIR}. Install it (sudo apt-get install dataset-fashion-mnist), "
            "or pass --data-dir with a directory of IDX files or the Hub id zalando-datasets/fashion_mnist."
        )
    print("Installing dataset-fashion-mnist with apt-get ...", flush=True)
    subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True)


def check_targets(report: dict) -> list[dict]:
    """Each target with the measured figure and whether it is met (accuracies in points)."""
    methods, full = report["methods"], report["full_width"]
    neumeta, seen = methods["neumeta"], set(report["seen_widths"])
    points = lambda value: round(100 * value, 2)  # noqa: E731
    targets = [
        {
            "target": f"NeuMeta at full width within {points(FULL_WIDTH_TOLERANCE)} points of the base",
            "measured": f"{points(neumeta[full])} vs {points(methods['base'])}",
            "met": neumeta[full] >= methods["base"] - FULL_WIDTH_TOLERANCE,
        }
    ]
    for width, accuracy in methods["individual"].items():
        targets.append({
            "target": f"width {width}: NeuMeta at most {points(INDIVIDUAL_TOLERANCE)} points below individual",
            "measured": f"{points(neumeta[width])} vs {points(accuracy)}",
            "met": neumeta[width] >= accuracy - INDIVIDUAL_TOLERANCE,
        })
    smallest = min(neumeta)
    targets.append({
        "target": f"width {smallest}: NeuMeta at least {points(PRUNING_MARGIN)} points above L1 pruning",
        "measured": f"{points(neumeta[smallest])} vs {points(methods['pruned_l1'][smallest])}",
        "met": neumeta[smallest] >= methods["pruned_l1"][smallest] + PRUNING_MARGIN,
    })
    for width in sorted(neumeta):
        neighbours = [neumeta[w] for w in (width - 1, width + 1) if w in seen and w in neumeta]
        if width in seen or not neighbours:
            continue
        expected = sum(neighbours) / len(neighbours)
        targets.append({
            "target": f"unseen width {width}: no more than {points(UNSEEN_TOLERANCE)} points below its seen neighbours",
            "measured": f"{points(neumeta[width])} vs {points(expected)}",
            "met": neumeta[width] >= expected - UNSEEN_TOLERANCE,
        })
    targets.append({
        "target": "INR parameters at most the full-width network's",
        "measured": f"{report['inr_parameters']:,} vs {report['base_parameters']:,}",
        "met": report["inr_parameters"] <= report["base_parameters"],
    })
    return targets


def markdown(report: dict) -> str:
    methods, ablations = report["methods"], report["ablations"]
    columns = {"individual": methods["individual"], "pruned_l1": methods["pruned_l1"], "neumeta": methods["neumeta"]}
    columns |= {f"ablation: {name}": values for name, values in ablations.items()}
    seen = set(report["seen_widths"])
    lines = [
        f"# NeuMeta quality: {report['family']} on {report['dataset']} (test accuracy, %)",
        "",
        f"Base network (width {report['full_width']}, {report['base_parameters']:,} parameters): "
        f"{100 * methods['base']:.2f}. INR: {report['inr_parameters']:,} parameters. "
        f"Unseen widths are marked *. Recipe `{report['recipe']}`"
        + (f" with `{' '.join(report['overrides'])}`" if report["overrides"] else "")
        + f"; {report['wall_seconds']['total'] / 60:.1f} minutes in all.",
        "",
        "| width | " + " | ".join(columns) + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    for width in sorted(methods["neumeta"]):
        cells = [f"{100 * values[width]:.2f}" if width in values else "" for values in columns.values()]
        lines.append(f"| {width}{'' if width in seen else '*'} | " + " | ".join(cells) + " |")
    lines += ["", "| target | measured | met |", "|---|---|:---:|"]
    lines += [f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |" for t in report["targets"]]
    seconds = ", ".join(f"{name} {value:.0f}" for name, value in report["wall_seconds"].items())
    return "\n".join(lines + ["", f"Wall seconds: {seconds}.", ""])


def plot(report: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, seen = report["methods"], set(report["seen_widths"])
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, values in (("individual", methods["individual"]), ("pruned_l1", methods["pruned_l1"])):
        widths = sorted(values)
        axis.plot(widths, [100 * values[w] for w in widths], marker="s" if name == "individual" else None, label=name)
    # Distinct colours for the ablations (the default cycle's red and brown look alike at this line weight);
    # dash-dot for the num_samples ones, which resample the main run rather than train another.
    colours = ["tab:green", "tab:red", "tab:purple", "tab:cyan", "tab:olive", "tab:pink", "tab:brown"]
    for (name, values), colour in zip(report["ablations"].items(), colours):
        widths = sorted(values)
        style = "-." if name.startswith("num_samples") else ":"
        axis.plot(widths, [100 * values[w] for w in widths], lw=1.0, ls=style, color=colour, label=f"ablation: {name}")
    neumeta = methods["neumeta"]
    widths = sorted(neumeta)
    axis.plot(widths, [100 * neumeta[w] for w in widths], color="black", lw=1.5, label="neumeta")
    unseen = [w for w in widths if w not in seen]
    axis.scatter(unseen, [100 * neumeta[w] for w in unseen], facecolors="white", edgecolors="black", zorder=3,
                 label="neumeta, unseen width")
    axis.axhline(100 * methods["base"], color="gray", ls="--", lw=0.8, label="base network")
    top = 100 * max(methods["base"], *neumeta.values())
    axis.set_ylim(max(0, top - 20), top + 1)  # pruning collapses far below; keep the interesting band readable
    axis.set_xlabel("width")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(f"{report['family']} on {report['dataset']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="x-small", ncol=2, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(report: dict, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(suffix) for suffix in (".json", ".md", ".png")]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report))
    plot(report, paths[2])
    return paths


if __name__ == "__main__":
    main()
