"""Speed and memory benchmark of NeuMeta weight generation on CPU.

Prints one JSON object to stdout (and a short summary to stderr). All ratios are computed from measurements
taken in the same run, since absolute timings on a shared machine are noisy: the cases run interleaved, round
by round after a warm-up round, and each ratio is the median over rounds of the case's time over the matmul
floor timed right beside it. Timings in ms are medians.

What it measures (ResNet-20 CIFAR, morph="last", width 64, default INR of 4 x 256 per-tensor heads):

* materialise_ms: `generate_weights(64)`: cached coordinates, Fourier encoding, INR, unpacking and scaling.
* sample_model_ms: `sample_model(64, num_samples=1)`: the above plus building the standalone network.
* matmul_floor_ms: only the INR's matrix multiplies over the same rows with the same per-head weights
  (`x_h @ W_h` per head and layer, preallocated inputs and outputs), i.e. the arithmetic floor.
* per_sample_ms: `generate_weights(64, num_samples=N) / N` (default N = 100).
* peak memory of num_samples=1 against num_samples=N, each in a fresh subprocess.
* coordinates_1p7m_ms: `MorphSpec.build_coordinates` (uncached) for an MLP of width 1300 (1.79M rows).
* reference_style_ms: an *emulation* of the public reference implementation's approach (coordinates built
  by per-element Python loops, Fourier features by a loop over frequencies and inputs, the INR evaluated head
  by head on boolean-masked rows, results scattered by index), per sample, with the same INR weights.

`--scale` runs another section instead (a few minutes): untrained hypernetworks with a small INR (64 x 2) around
a ViT-B (57 M generated feed-forward weights) and a Llama of comparable size, their feed-forward layers folded
(stock default) and, for ViT-B, unfolded (57 M INR rows, generated in chunks). Per case, in a fresh subprocess:
seconds of `generate_weights` at the full and a middle width, the peak resident memory increase against
`generation_cost`'s estimate, the INR's arithmetic floor (multiply-adds / measured matmul GFLOP/s), and the
training memory per generated weight (differentiable `generate` + backward) for sizing a GPU.

Run from the repository root:  .venv/bin/python benchmarks/speed.py [--repeats 7] [--output result.json]
                               .venv/bin/python benchmarks/speed.py --scale [--threads 1] [--output scale.json]
"""

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

# The package is not installed: make the repository root importable when run as a script.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from neumeta_hf import (  # noqa: E402
    MorphSpec,
    NeuMetaMLPConfig,
    NeuMetaModel,
    NeuMetaResNetCifarConfig,
    NeuMetaResNetCifarForImageClassification,
    modeling_neumeta,
)

WIDTH = 64
MLP_WIDTH = 1300

TARGETS = {
    "materialise_over_floor": 1.5,
    "per_sample_over_floor": 1.2,
    "peak_memory_ratio": 2.0,
    "coordinates_1p7m_ms": 50.0,
}


def build_model(shared_trunk: bool = False) -> NeuMetaModel:
    base = NeuMetaResNetCifarForImageClassification(NeuMetaResNetCifarConfig(morph="last")).eval()
    return NeuMetaModel.from_base_model(
        base, width_range=(32, 64), morph="last", smooth=False, shared_trunk=shared_trunk
    ).eval()


def time_ms(fn, repeats: int, warmup: int = 1) -> dict:
    """Median (and min, all runs) in milliseconds of `fn()` after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    return {"median": statistics.median(runs), "min": min(runs), "runs": [round(r, 3) for r in runs]}


def _once(fn, faults: list | None = None) -> float:
    """Wall time of `fn()` in ms; appends (minor page faults, system CPU ms) of the call to `faults`."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    fn()
    elapsed = (time.perf_counter() - start) * 1e3
    if faults is not None:
        after = resource.getrusage(resource.RUSAGE_SELF)
        faults.append((after.ru_minflt - before.ru_minflt, (after.ru_stime - before.ru_stime) * 1e3))
    return elapsed


def count(tensors) -> int:
    return sum(t.numel() for t in tensors)


# ------------------------------------------------------------------------------------------------ matmul floor


def matmul_floor(model: NeuMetaModel, row_counts) -> tuple:
    """(run, flops): `run()` does only the INR's matmuls, head by head on that head's rows (random inputs of
    the right shapes, preallocated outputs); `flops` is their floating-point operation count."""
    inr = model.inr
    hidden_size = inr.hidden_weight.shape[-1]
    in_features = inr.position_weight.shape[1]  # the per-tensor context term is not per row: left out
    out_features = inr.output_weight.shape[-1]
    heads = []
    for head, rows in enumerate(row_counts):
        heads.append(
            {
                "x_in": torch.randn(rows, in_features),
                "x_hidden": torch.randn(rows, hidden_size),
                "y_hidden": torch.empty(rows, hidden_size),
                "y_out": torch.empty(rows, out_features),
                "w_in": inr.position_weight[head],
                "w_hidden": [inr.hidden_weight[layer, head] for layer in range(inr.hidden_weight.shape[0])],
                "w_out": inr.output_weight[head],
            }
        )

    def run():
        for h in heads:
            torch.mm(h["x_in"], h["w_in"], out=h["y_hidden"])
            for weight in h["w_hidden"]:
                torch.mm(h["x_hidden"], weight, out=h["y_hidden"])
            torch.mm(h["x_hidden"], h["w_out"], out=h["y_out"])

    flops = 2 * sum(rows for rows in row_counts) * (
        in_features * hidden_size + inr.hidden_weight.shape[0] * hidden_size**2 + hidden_size * out_features
    )
    return run, flops


# ------------------------------------------------------------------------------- reference-style emulation


def reference_style_sample(model: NeuMetaModel, width: int) -> dict[str, torch.Tensor]:
    """EMULATION of the public reference approach (not the library's code path), one sample, same INR weights.

    Coordinates are built per element in Python, encoded by a loop over frequencies and inputs, and the INR
    runs head by head on the rows selected by a boolean mask; outputs are scattered into tensors by index.
    """
    spec, inr = model.spec, model.inr
    shapes = spec.shapes(width)
    full = spec.shapes(spec.full_width)
    names = spec.names
    # 1. Coordinates: one Python list per generated element (row).
    coords, keys, indices = [], [], []
    for i, name in enumerate(names):
        shape = shapes[name]
        if len(shape) >= 2:
            for out_channel in range(shape[0]):
                for in_channel in range(shape[1]):
                    coords.append([i, out_channel, in_channel, len(names), shape[0], shape[1]])
                    keys.append(name)
                    indices.append((out_channel, in_channel))
        else:
            for out_channel in range(shape[0]):
                coords.append([i, out_channel, 0, len(names), shape[0], 1])
                keys.append(name)
                indices.append((out_channel, 0))
    coords = torch.tensor(coords, dtype=torch.float32)
    indices = torch.tensor(indices, dtype=torch.int64)
    keys = np.array(keys)
    # INR inputs in this library's convention: channel centres, then tensor position and relative sizes.
    full_sizes = torch.tensor([list(full[n][:2]) + [1] * (2 - len(full[n][:2])) for n in names], dtype=torch.float32)
    layer_id = coords[:, 0].long()
    positions = (coords[:, 1:3] + 0.5) / coords[:, 4:6]
    context = torch.cat([(coords[:, 0] / coords[:, 3]).unsqueeze(1), coords[:, 4:6] / full_sizes[layer_id]], 1)

    # 2. Fourier features, one frequency and one input at a time, for every row (the context too). `columns`
    # maps each feature to its column in FourierFeatures' order, so the same weights give the same function.
    def encode(x, frequencies):
        n = x.shape[1]
        features, columns = [x], list(range(n))
        for frequency in range(frequencies):
            for j in range(n):
                angle = (2.0**frequency * np.pi) * x[:, j].unsqueeze(-1)
                features += [torch.sin(angle), torch.cos(angle)]
                columns += [n + j * frequencies + frequency, n + n * frequencies + j * frequencies + frequency]
        ordered = torch.empty(x.shape[0], len(columns))
        ordered[:, columns] = torch.cat(features, dim=-1)
        return ordered

    position_features = encode(positions, len(inr.position_features.frequencies))
    context_features = encode(context, len(inr.context_features.frequencies))
    # 3. The INR head by head on masked rows.
    output = torch.zeros(positions.shape[0], inr.output_weight.shape[-1])
    for lid in torch.unique(layer_id).tolist():
        mask = layer_id == lid
        pre = position_features[mask] @ inr.position_weight[lid, : position_features.shape[1]]
        pre = pre + context_features[mask] @ inr.context_weight[lid] + inr.input_bias[lid]
        hidden = torch.relu(pre)
        for layer in range(inr.hidden_weight.shape[0]):
            update = torch.relu(hidden @ inr.hidden_weight[layer, lid] + inr.hidden_bias[layer, lid])
            hidden = inr.residual_scale[layer, lid] * update + hidden
        output[mask] = hidden @ inr.output_weight[lid] + inr.output_bias[lid]
    # 4. Scatter rows into the tensors by key mask and index.
    weights = {}
    for index, name in enumerate(names):
        shape = shapes[name]
        mask = torch.from_numpy(keys == name)
        tensor = torch.empty(shape)
        rows = output[mask][:, : spec.kernel_sizes[index]] * model.output_scale[index]
        if len(shape) >= 2:
            tensor[indices[mask, 0], indices[mask, 1]] = rows.view(-1, *shape[2:])
        else:
            tensor[indices[mask, 0]] = rows[:, 0]
        weights[name] = tensor
    return weights


# ---------------------------------------------------------------------------------------------------- memory

MEMORY_METHOD = (
    "Each case runs in a fresh subprocess: build the model, gc + malloc_trim(0), read VmRSS (baseline), reset "
    "the kernel's peak-RSS mark (write 5 to /proc/self/clear_refs), call generate_weights(64, num_samples=n), "
    "read VmHWM; increase = VmHWM - baseline. The reset matters: from_base_model already runs the INR at width "
    "64 (calibration), so ru_maxrss alone would hide the generation's peak. Falls back to the ru_maxrss "
    "increase (peak_reset false) when clear_refs cannot be written. Done twice: with glibc's default malloc "
    "(what a user sees; freed blocks stay cached in the heap, so repeated generations raise RSS somewhat) and "
    "with MALLOC_MMAP_THRESHOLD_=131072 (large tensors mmapped and returned on free, so the peak RSS tracks "
    "the live tensors: the '_live' numbers)."
)
LIVE_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_memory() -> tuple[int, bool]:
    """(resident kB now, whether the kernel's peak mark was reset to it): freed memory handed back first, so that
    the next `VmHWM` reading is this process's peak from here on."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    baseline_kb = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return baseline_kb, True
    except OSError:
        return baseline_kb, False


def memory_child(num_samples: int):
    """Runs in a subprocess; prints its JSON measurement."""
    model = build_model()
    ru_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    baseline_kb, peak_reset = _reset_peak_memory()
    weights = model.generate_weights(WIDTH, num_samples=num_samples)
    peak_kb = _status_kb("VmHWM")
    ru_after_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # (After the reset ru_maxrss reads the new, lower mark, so it is only a fallback.)
    increase_kb = peak_kb - baseline_kb if peak_reset else ru_after_kb - ru_before_kb
    print(
        json.dumps(
            {
                "num_samples": num_samples,
                "peak_reset": peak_reset,
                "baseline_rss_mb": round(baseline_kb / 1024, 2),
                "peak_rss_mb": round(peak_kb / 1024, 2),
                "increase_mb": round(increase_kb / 1024, 2),
                "output_mb": round(sum(w.numel() * w.element_size() for w in weights.values()) / 2**20, 3),
            }
        )
    )


def measure_memory(num_samples: int, threads: int | None, env: dict | None = None) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--memory-child", str(num_samples)]
    if threads:
        command += ["--threads", str(threads)]
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------ scale

# A SMALL INR, so that the section runs in minutes on 2 CPU cores: the default (256 x 4) does about 10x the
# arithmetic per row. Timings scale with that arithmetic; see `floor_s`.
SCALE_INR = {"hidden_size": 64, "num_layers": 2}
SCALE_NOTE = (
    "untrained (random-initialised) hypernetworks with a SMALL INR: hidden size 64, 2 layers (the default, "
    "256 x 4, does about 10x the arithmetic per row), smooth=False, float32, CPU"
)
SCALE_TARGETS = {
    "vit-b": "ViTForImageClassification(ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, "
    "intermediate_size=3072)): feed-forward width 768-3072",
    "llama": "LlamaForCausalLM(LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, "
    "num_attention_heads=12, vocab_size=1000)): feed-forward width 512-2048",
}
# (target, fold_fixed_axes). Stock models fold a weight's fixed axis into its INR rows by default (one row per
# feed-forward unit holding 768 values); unfolded, ViT-B has one row per weight, 57 M rows: the case that needs
# chunked generation (modeling_neumeta.CHUNK_ROWS rows per INR call).
SCALE_CASES = (("vit-b", True), ("llama", True), ("vit-b", False))
# Training memory is measured on a moderate generation: a middle width folded, width 64 (1.2 M rows) unfolded.
SCALE_TRAIN_WIDTH = {True: "middle", False: 64}
SCALE_METHOD = (
    "Each measurement runs in a fresh subprocess (default glibc malloc): build the hypernetwork, gc + "
    "malloc_trim(0), read VmRSS, reset the peak mark (clear_refs), run the case, read VmHWM; peak_increase = "
    "VmHWM - VmRSS before. 'generate': generate_weights(width) (no gradients, chunked INR), timed cold (first "
    "call, building the width's coordinates: this is the measured peak) and warm (second call). 'train': the "
    "differentiable generate(width) (one INR batch) + backward of the sum of squares of the generated tensors; "
    "train_bytes_per_weight = peak_increase / generated weights. floor_s = INR multiply-adds (rows x "
    "hidden x (position features + layers x hidden + outputs)) x 2 / the GFLOP/s of those same matrix products "
    "measured on one chunk's rows on this machine (Fourier features, unpacking and the base anchor excluded)."
)


def scale_base_model(target: str):
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if target == "vit-b":
        config = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
        return ViTForImageClassification(config)
    config = LlamaConfig(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, vocab_size=1000
    )
    return LlamaForCausalLM(config)


def scale_model(target: str, fold: bool) -> NeuMetaModel:
    hyper = NeuMetaModel.from_base_model(scale_base_model(target), smooth=False, **SCALE_INR)
    if not fold:
        # from_base_model's calibration would generate the full width once more (57 M rows unfolded, about two
        # minutes here); the same config unfolded, random-initialised and uncalibrated, times the same.
        hyper.config.fold_fixed_axes = False
        hyper = NeuMetaModel(hyper.config)
    return hyper.eval()


def scale_width(hyper: NeuMetaModel, width) -> int:
    low, high = hyper.config.width_range
    return {"full": high, "middle": (low + high) // 2}.get(width, width)


def inr_matmul_gflops(hyper: NeuMetaModel, rows: int, repeats: int = 5) -> float:
    """GFLOP/s of the INR's matrix products (one head's weights) on one chunk's rows, best of `repeats`."""
    inr = hyper.inr
    rows = min(rows, modeling_neumeta.CHUNK_ROWS)
    hidden, features = inr.hidden_weight.shape[-1], inr.position_weight.shape[1]
    x_in, x_hidden = torch.randn(rows, features), torch.randn(rows, hidden)
    y_hidden, y_out = torch.empty(rows, hidden), torch.empty(rows, inr.output_weight.shape[-1])
    weights = [inr.hidden_weight[layer, 0].detach() for layer in range(inr.hidden_weight.shape[0])]

    def run():
        torch.mm(x_in, inr.position_weight[0].detach(), out=y_hidden)
        for weight in weights:
            torch.mm(x_hidden, weight, out=y_hidden)
        torch.mm(x_hidden, inr.output_weight[0].detach(), out=y_out)

    flops = 2 * rows * hidden * (features + len(weights) * hidden + y_out.shape[1])
    return flops / 1e9 / min(_once(run) for _ in range(repeats)) * 1e3


def scale_child(case: dict):
    """Runs in a subprocess; prints its JSON measurement of one case."""
    hyper = scale_model(case["target"], case["fold"])
    width = scale_width(hyper, case["width"])
    rows = hyper.spec.row_count(width)
    inr = hyper.inr
    hidden, layers = hyper.config.hidden_size, hyper.config.num_layers
    multiply_adds = rows * hidden * (inr.position_weight.shape[1] + layers * hidden + inr.output_weight.shape[-1])
    estimate, _ = hyper.generation_cost(width, chunked=case["mode"] == "generate")
    baseline_kb, peak_reset = _reset_peak_memory()
    if not peak_reset:
        raise RuntimeError("the scale section measures peak memory through /proc/self/clear_refs (Linux)")
    start = time.perf_counter()
    if case["mode"] == "generate":
        weights = hyper.generate_weights(width)
    else:
        weights = hyper.generate(width)
        sum(tensor.square().sum() for tensor in weights.values()).backward()
    seconds = time.perf_counter() - start
    peak_kb = _status_kb("VmHWM")
    generated = count(weights.values())
    result = {
        **case,
        "width": width,
        "rows": rows,
        "generated_weights": generated,
        "inr_parameters": count(inr.parameters()),
        "seconds": round(seconds, 3),
        "peak_increase_mb": round((peak_kb - baseline_kb) / 1024, 1),
        "estimate_mb": round(estimate / 2**20, 1),
    }
    if case["mode"] == "generate":
        del weights
        if seconds < 10:  # (the long unfolded cases: the coordinates, built once per width, take little of it)
            result["warm_seconds"] = round(_once(lambda: hyper.generate_weights(width)) / 1e3, 3)
        gflops = inr_matmul_gflops(hyper, rows)
        result.update(
            multiply_adds=multiply_adds,
            matmul_gflop_per_s=round(gflops, 1),
            floor_s=round(2 * multiply_adds / 1e9 / gflops, 3),
        )
    else:
        result["train_bytes_per_weight"] = round((peak_kb - baseline_kb) * 1024 / generated, 1)
    print(json.dumps(result))


def run_scale(args) -> dict:
    """The scale section: generation of ViT-B- and Llama-sized feed-forward layers, each case in a subprocess."""
    result = {
        "benchmark": "neumeta_hf generation at scale (CPU)",
        "note": SCALE_NOTE,
        "method": SCALE_METHOD,
        "targets": SCALE_TARGETS,
        "chunk_rows": modeling_neumeta.CHUNK_ROWS,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_start": list(os.getloadavg()),
        "cases": [],
    }
    cases = [
        {"target": target, "fold": fold, "mode": "generate", "width": width}
        for target, fold in SCALE_CASES
        for width in ("full", "middle")
    ]
    cases += [
        {"target": target, "fold": fold, "mode": "train", "width": SCALE_TRAIN_WIDTH[fold]}
        for target, fold in SCALE_CASES
    ]
    for case in cases:
        command = [sys.executable, os.path.abspath(__file__), "--scale-child", json.dumps(case)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        measured = subprocess.run(command, capture_output=True, text=True, check=True)
        result["cases"].append(json.loads(measured.stdout.strip().splitlines()[-1]))
        print(f"  {case}: done", file=sys.stderr)
    result["load_average_end"] = list(os.getloadavg())
    return result


def summarise_scale(r: dict):
    load = f"{r['load_average_start'][0]:.2f} -> {r['load_average_end'][0]:.2f}"
    lines = [f"{r['note']}; {r['torch_threads']} threads; INR chunks of {r['chunk_rows']} rows; load average {load}"]
    for c in r["cases"]:
        name = f"{c['target']} {'folded' if c['fold'] else 'unfolded'} width {c['width']}"
        size = f"{c['rows']:,} rows -> {c['generated_weights']:,} weights"
        if c["mode"] == "generate":
            lines.append(
                f"generate_weights {name:30} {size:36} {c['seconds']:7.2f} s cold, "
                + (f"{c['warm_seconds']:7.2f} s warm, " if "warm_seconds" in c else "")
                + f"floor {c['floor_s']:6.2f} s ({c['matmul_gflop_per_s']:.0f} GFLOP/s), "
                f"peak +{c['peak_increase_mb']:.0f} MB (estimate {c['estimate_mb']:.0f} MB)"
            )
        else:
            lines.append(
                f"generate+backward {name:29} {size:36} {c['seconds']:7.2f} s, peak +{c['peak_increase_mb']:.0f} MB "
                f"= {c['train_bytes_per_weight']:.0f} bytes/generated weight"
            )
    print("\n".join(lines), file=sys.stderr)


# ------------------------------------------------------------------------------------------------------ main


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def main():
    args = parse_arguments()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        with torch.no_grad():
            memory_child(args.memory_child)
        return
    if args.scale_child is not None:
        scale_child(json.loads(args.scale_child))
        return
    if args.scale:
        started = time.perf_counter()
        result = run_scale(args)
        result["total_benchmark_s"] = round(time.perf_counter() - started, 1)
        report(result, args.output, summarise_scale)
        return

    started = time.perf_counter()
    start_load = list(os.getloadavg())
    result = {
        "benchmark": "neumeta_hf generation speed (CPU)",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "repeats": args.repeats,
        "repeats_many": args.repeats_many,
        "timing": "median ms after a warm-up; cases interleaved round by round",
    }
    model = build_model()
    shared_trunk_model = build_model(shared_trunk=True)
    result["model"] = describe_model(model)
    timings = time_generation(model, shared_trunk_model, args)
    result |= timing_results(timings, shared_trunk_model, args)
    result |= coordinate_results(args)
    if not args.skip_memory:
        result |= memory_results(args)
    result["raw_timings_ms"] = {name: [round(v, 3) for v in values] for name, values in timings["runs"].items()}
    result["raw_timings_ms"]["per_sample_many"] = [round(v, 3) for v in timings["many_runs"]]
    result["load_average"] = {"start": start_load, "end": list(os.getloadavg())}
    result["targets"] = check_targets(result)
    result["total_benchmark_s"] = time.perf_counter() - started
    report(result, args.output, summarise)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="Timings: medians over interleaved rounds after a warm-up round; ratios are paired within rounds. "
        "Check load_average in the output: other processes on the machine distort everything.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of the fast cases (median taken)")
    parser.add_argument(
        "--repeats-many", type=int, default=3, help="timed runs of the slow num_samples=N generation"
    )
    parser.add_argument("--num-samples", type=int, default=100, help="N for the many-sample measurements")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads before measuring (None: torch's default)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="skip the subprocess memory measurement")
    parser.add_argument("--output", metavar="PATH", help="also write the JSON object to PATH")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="run only the scale section: untrained hypernetworks (small INR) around ViT-B- and Llama-sized "
        "feed-forward layers; seconds, peak memory, the INR's arithmetic floor, training bytes per weight",
    )
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--scale-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.repeats, args.repeats_many, args.num_samples) < 1:
        parser.error("--repeats, --repeats-many and --num-samples must be at least 1")
    return args


def describe_model(model) -> dict:
    """The measured hypernetwork: its family, INR, generated tensors and parameter counts."""
    spec = model.spec
    coordinates = spec.coordinates(WIDTH)
    row_counts = coordinates.row_counts
    with torch.no_grad():
        generated = model.generate_weights(WIDTH)
    return {
        "family": "neumeta-resnet-cifar (ResNet-20), morph=last, smooth=False, width 64",
        "inr": f"{model.config.num_layers} x {model.config.hidden_size}, "
        f"{'shared trunk' if model.config.shared_trunk else f'{len(row_counts)} per-tensor heads'}",
        "generated_tensors": {name: list(shape) for name, shape in zip(spec.names, coordinates.shapes)},
        "rows": sum(row_counts),
        "row_counts": list(row_counts),
        "inr_parameters": count(model.inr.parameters()),
        "generated_parameters": count(generated.values()),
        "network_parameters": count(model.spec.skeleton(WIDTH).parameters()),
    }


def time_generation(model, shared_trunk_model, args) -> dict:
    """Steps 2-4: every case timed in interleaved rounds beside the matmul floor, then num_samples=N. Returns the
    raw runs, ratios to the floor and page faults."""
    coordinates = model.spec.coordinates(WIDTH)
    row_counts = coordinates.row_counts
    floor_fn, floor_flops = matmul_floor(model, row_counts)
    positions = coordinates.positions()
    cases = {
        "matmul_floor": floor_fn,
        "materialise": lambda: model.generate_weights(WIDTH),
        # The alternative INR layout: one MLP for all tensors, per-tensor embeddings (same width and depth).
        "materialise_shared_trunk": lambda: shared_trunk_model.generate_weights(WIDTH),
        "inr_forward": lambda: model.inr(positions, coordinates.context, row_counts),
        "sample_model": lambda: model.sample_model(WIDTH, num_samples=1),
        "reference_style": lambda: reference_style_sample(model, WIDTH),
    }
    with torch.no_grad():
        # 2, 3, 7: interleaved rounds (one warm-up round), so that load changes hit every case alike; each
        # ratio is taken within a round against the mean of the floors run just before and after it.
        runs = {name: [] for name in cases}
        faults = {name: [] for name in cases}
        ratios = {name: [] for name in cases if name != "matmul_floor"}
        for round_index in range(args.repeats + 1):
            timed = {name: _once(fn, faults[name] if round_index else None) for name, fn in cases.items()}
            floor_after = _once(floor_fn)
            if round_index == 0:
                continue
            floor_round = (timed["matmul_floor"] + floor_after) / 2
            for name, value in timed.items():
                runs[name].append(value)
                if name in ratios:
                    ratios[name].append(value / floor_round)
            runs["matmul_floor"].append(floor_after)
        # 4. Many samples, each run bracketed by floor runs.
        many_runs, many_ratios = [], []
        for _ in range(args.repeats_many):
            before = _once(floor_fn)
            many_faults = []
            per_sample = _once(lambda: model.generate_weights(WIDTH, num_samples=args.num_samples), many_faults)
            per_sample /= args.num_samples
            faults.setdefault("per_sample_many", []).append(tuple(v / args.num_samples for v in many_faults[0]))
            after = _once(floor_fn)
            many_runs.append(per_sample)
            many_ratios.append(per_sample / ((before + after) / 2))
            runs["matmul_floor"] += [before, after]

    return {
        "runs": runs, "ratios": ratios, "faults": faults, "many_runs": many_runs, "many_ratios": many_ratios,
        "floor_flops": floor_flops,
    }  # fmt: skip


def timing_results(timings: dict, shared_trunk_model, args) -> dict:
    """The report's timing figures: medians, ratios to the floor (median and best-of) and page faults."""
    runs, ratios, faults = timings["runs"], timings["ratios"], timings["faults"]
    many_runs, many_ratios, floor_flops = timings["many_runs"], timings["many_ratios"], timings["floor_flops"]
    result = {}
    median = {name: statistics.median(values) for name, values in runs.items()}
    floor_ms = median["matmul_floor"]
    result["materialise_ms"] = median["materialise"]
    result["sample_model_ms"] = median["sample_model"]
    result["inr_forward_ms"] = median["inr_forward"]
    result["matmul_floor_ms"] = floor_ms
    result["matmul_floor_gflops"] = floor_flops / 1e9
    result["matmul_floor_gflop_per_s"] = floor_flops / 1e9 / (floor_ms / 1e3)
    result["materialise_over_floor"] = statistics.median(ratios["materialise"])
    result["materialise_shared_trunk_ms"] = median["materialise_shared_trunk"]
    result["materialise_shared_trunk_over_floor"] = statistics.median(ratios["materialise_shared_trunk"])
    result["shared_trunk_inr_parameters"] = count(shared_trunk_model.inr.parameters())
    result["sample_model_over_floor"] = statistics.median(ratios["sample_model"])
    result["inr_forward_over_floor"] = statistics.median(ratios["inr_forward"])
    result["num_samples"] = args.num_samples
    result["per_sample_ms"] = statistics.median(many_runs)
    result["per_sample_over_floor"] = statistics.median(many_ratios)
    result["reference_style_ms"] = median["reference_style"]
    result["reference_style_over_floor"] = statistics.median(ratios["reference_style"])
    result["reference_style_note"] = (
        "EMULATION of the public reference approach (per-element Python coordinate loops, per-frequency "
        "encoding loop, boolean-masked loop over heads, index scatter), one sample, same INR weights and the "
        "same function as generate_weights; the reference rebuilds coordinates for every sample, so this is "
        "also its per-sample cost"
    )
    result["reference_style_over_materialise"] = statistics.median(
        r / m for r, m in zip(ratios["reference_style"], ratios["materialise"])
    )
    # Best-of ratios: less sensitive to other processes stealing the CPU (timeit's argument for the minimum).
    floor_min = min(runs["matmul_floor"])
    result["ratios_from_minimums"] = {
        "materialise_over_floor": min(runs["materialise"]) / floor_min,
        "inr_forward_over_floor": min(runs["inr_forward"]) / floor_min,
        "sample_model_over_floor": min(runs["sample_model"]) / floor_min,
        "per_sample_over_floor": min(many_runs) / floor_min,
        "reference_style_over_floor": min(runs["reference_style"]) / floor_min,
    }
    result["page_faults_per_call"] = {
        name: {
            "minor_faults": statistics.median(f for f, _ in values),
            "system_cpu_ms": round(statistics.median(t for _, t in values), 2),
        }
        for name, values in faults.items()
    }
    result["page_faults_note"] = (
        "minor page faults and kernel CPU time per call (getrusage): fresh pages touched by newly allocated "
        "tensors; they are part of the wall time above. Allocator tuning env vars: "
        + json.dumps({k: v for k, v in os.environ.items() if k.startswith("MALLOC_")} or "none set")
    )
    result["ratio_method"] = (
        "median over rounds of (case time / mean of the matmul-floor runs just before and after it); "
        "the ms values are plain medians"
    )

    return result


def coordinate_results(args) -> dict:
    """Step 6: coordinates for ~1.7M rows, built uncached."""
    mlp_spec = MorphSpec(NeuMetaMLPConfig(width=MLP_WIDTH))
    start = time.perf_counter()
    mlp_coordinates = mlp_spec.build_coordinates(MLP_WIDTH)
    first_ms = (time.perf_counter() - start) * 1e3
    mlp_rows = sum(mlp_coordinates.row_counts)
    del mlp_coordinates
    coordinates_timing = time_ms(lambda: mlp_spec.build_coordinates(MLP_WIDTH), args.repeats)
    coordinate_faults = []
    _once(lambda: mlp_spec.build_coordinates(MLP_WIDTH), coordinate_faults)
    result = {}
    result["coordinates_1p7m"] = {
        "family": f"neumeta-mlp width {MLP_WIDTH}, morph=all",
        "rows": mlp_rows,
        "row_counts": dict(zip(mlp_spec.names, mlp_coordinates_counts(mlp_spec))),
        "first_call_ms": first_ms,
        "min_ms": coordinates_timing["min"],
        "runs_ms": coordinates_timing["runs"],
        "minor_faults_per_call": coordinate_faults[0][0],
        "system_cpu_ms_per_call": round(coordinate_faults[0][1], 2),
    }
    result["coordinates_1p7m_ms"] = coordinates_timing["median"]

    return result


def memory_results(args) -> dict:
    """Step 5: peak memory of one and of N generations, each in a fresh subprocess."""
    result = {"memory_method": MEMORY_METHOD, "memory": {}}
    for suffix, env in (("", None), ("_live", LIVE_ENV)):
        one = measure_memory(1, args.threads, env)
        many_memory = measure_memory(args.num_samples, args.threads, env)
        result["memory"][f"num_samples_1{suffix}"] = one
        result["memory"][f"num_samples_{args.num_samples}{suffix}"] = many_memory
        result[f"peak_memory_1_mb{suffix}"] = one["increase_mb"]
        result[f"peak_memory_many_mb{suffix}"] = many_memory["increase_mb"]
        result[f"peak_memory_ratio{suffix}"] = many_memory["increase_mb"] / max(one["increase_mb"], 1e-9)



def check_targets(result: dict) -> dict:
    targets = {}
    for name, limit in TARGETS.items():
        strict = name == "coordinates_1p7m_ms"
        value = result.get(name)
        met = None if value is None else (value < limit if strict else value <= limit)
        targets[name] = {"target": f"{'<' if strict else '<='} {limit}", "value": value, "met": met}
    return targets


def report(result: dict, output: str | None, summary):
    """Print `result` as JSON, write it to `output` when given, then print its `summary`."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        with open(output, "w") as stream:
            stream.write(text + "\n")
    summary(result)


def mlp_coordinates_counts(spec: MorphSpec) -> list[int]:
    shapes = spec.shapes(MLP_WIDTH)
    return [shapes[name][0] * (shapes[name][1] if len(shapes[name]) > 1 else 1) for name in spec.names]


def summarise(r: dict):
    m = r["model"]
    lines = [
        f"torch {r['torch_version']}, {r['torch_threads']} threads; medians of {r['repeats']} rounds; "
        f"load average {r['load_average']['start'][0]:.2f} -> {r['load_average']['end'][0]:.2f}",
        f"ResNet-20 last block, width 64: {m['rows']} rows -> {m['generated_parameters']} generated values "
        f"(network {m['network_parameters']} params), INR {m['inr_parameters']} params",
        f"generate_weights(64)      {r['materialise_ms']:8.2f} ms  ({r['materialise_over_floor']:.2f}x floor)",
        f"  INR forward only        {r['inr_forward_ms']:8.2f} ms  ({r['inr_forward_over_floor']:.2f}x floor)",
        f"sample_model(64)          {r['sample_model_ms']:8.2f} ms",
        f"matmul floor              {r['matmul_floor_ms']:8.2f} ms  ({r['matmul_floor_gflop_per_s']:.1f} GFLOP/s)",
        f"num_samples={r['num_samples']}:".ljust(26)
        + f"{r['per_sample_ms']:8.2f} ms/sample ({r['per_sample_over_floor']:.2f}x floor)",
        f"reference-style emulation {r['reference_style_ms']:8.2f} ms/sample "
        f"({r['reference_style_over_materialise']:.1f}x generate_weights)",
        f"coordinates, {r['coordinates_1p7m']['rows']} rows: {r['coordinates_1p7m_ms']:.1f} ms median "
        f"(first call {r['coordinates_1p7m']['first_call_ms']:.1f} ms)",
    ]
    if "peak_memory_ratio" in r:
        lines.append(
            f"peak memory: +{r['peak_memory_1_mb']:.1f} MB (1 sample) vs +{r['peak_memory_many_mb']:.1f} MB "
            f"({r['num_samples']} samples): ratio {r['peak_memory_ratio']:.2f}; live tensors "
            f"+{r['peak_memory_1_mb_live']:.1f} vs +{r['peak_memory_many_mb_live']:.1f} MB: "
            f"ratio {r['peak_memory_ratio_live']:.2f}"
        )
    pf = r["page_faults_per_call"]["materialise"]
    lines.append(
        f"generate_weights page faults: {pf['minor_faults']:.0f} per call, {pf['system_cpu_ms']:.1f} ms kernel time"
    )
    lines.append(
        "targets: "
        + ", ".join(
            f"{name} {'met' if t['met'] else 'MISSED'}" for name, t in r["targets"].items() if t["met"] is not None
        )
    )
    lines.append(f"total {r['total_benchmark_s']:.0f} s")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
