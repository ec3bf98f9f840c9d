"""AlexNet on one GPU: the training step, whether the host can feed it, and the paper run's time.

Needs Keras 3, JAX, PyTorch and OpenCV, not TensorFlow (a GPU machine often has those
and not TensorFlow). Each measurement runs in a process of its own:

- **The training step**: the project's model (`tasks/learning/model.py`: paper
  variant, width 1.0, 227x227, written with `keras.ops` alone) built with
  `KERAS_BACKEND=jax` and trained with the paper's SGD as an XLA-compiled step, in
  float32 and under Keras's `mixed_bfloat16` policy, against a PyTorch AlexNet of
  the same architecture and parameter count (60,965,224, `bench/train_step.py`) in
  float32 and under bfloat16 autocast, channels-last, cuDNN's autotuner on; at batch
  128 (the paper's) and 512; synthetic batches held on the device; every step reads
  its loss back, as a loop that logs its loss would. Images/s is the median of
  `--repeats` timed runs of `--steps` steps after `--warmup` steps.
- **The host**: OpenCV decoding 256x256 canonical JPEGs (demo photos, quality 95, as
  the augment step writes them) in full, on one core and on every core.
- **The machine**: GPU, driver, CUDA and cuDNN, library versions, CPU.

From these it projects params-paper.yaml's 90 epochs of ImageNet-1k on the machine:
the input pipeline reaches `--pipeline-fraction` of the decode limit (measured on
a CPU machine with TensorFlow, docs/benchmarks.md), and a run goes at the slower
of the step and the input. Everything goes to `--out` (JSON) and a table on stdout.

    python bench/gpu.py --out gpu.json [--batches 128 512] [--steps 30] [--repeats 3]
    python bench/gpu.py --quick          # a tiny run on a CPU, to check the script; measures nothing
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from train_step import torch_alexnet  # bench/, the folder of this script, is first on its path

REPO = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 227, 1000
IMAGENET, EPOCHS = 1_281_167, 90
CONFIGS = {
    "keras-jax-float32": "the project's model, Keras 3 on JAX, float32 (XLA-compiled train step)",
    "keras-jax-bfloat16": "the same, Keras's mixed_bfloat16 policy",
    "torch-float32": "PyTorch AlexNet, float32, channels-last",
    "torch-bfloat16": "PyTorch AlexNet, bfloat16 autocast, channels-last",
}


def rates(step, batch: int, warmup: int, steps: int, repeats: int) -> list[float]:
    """Images/s of `repeats` timed runs of `steps` steps, after `warmup` steps (compilation included there)."""
    for _ in range(warmup):
        step()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        out.append(batch * steps / (time.perf_counter() - start))
    return out


def keras_step(name: str, batch: int):
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    sys.path.insert(0, str(REPO))
    from tasks.learning import model

    if name.endswith("bfloat16"):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    net = model.build(CLASSES, mean=[120.0] * 3, std=[60.0] * 3)
    assert net.count_params() == 60_965_224
    net.compile(model.PaperSGD(0.01, momentum=0.9, l2=5e-4), keras.losses.SparseCategoricalCrossentropy(),
                jit_compile=True)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.uniform(0, 255, (batch, SIZE, SIZE, 3)).astype("float32"))
    y = jax.device_put(rng.integers(0, CLASSES, batch))
    return lambda: float(net.train_on_batch(x, y)), str(jax.devices()[0])


def torch_step(name: str, batch: int):
    import torch
    from torch import nn

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    net = torch_alexnet().to(device, memory_format=torch.channels_last)
    assert sum(p.numel() for p in net.parameters()) == 60_965_224
    x = (torch.rand(batch, 3, SIZE, SIZE, device=device) * 255).to(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=name.endswith("bfloat16")):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return step, torch.cuda.get_device_name() if device == "cuda" else "cpu"


def canonical_jpegs(count: int) -> list[bytes]:
    """`count` 256x256 JPEGs as the augment step writes them: demo photos, shorter side to 256, centre square."""
    import cv2

    sys.path.insert(0, str(REPO))
    from tasks.acquire import demo_images

    out = []
    for i in range(count):
        img = demo_images.render(demo_images.KINDS[i % 2], i)
        h, w = img.shape[:2]
        scale = 256 / min(h, w)
        img = cv2.resize(img, (max(256, round(w * scale)), max(256, round(h * scale))), interpolation=cv2.INTER_AREA)
        top, left = (img.shape[0] - 256) // 2, (img.shape[1] - 256) // 2
        out.append(cv2.imencode(".jpg", img[top:top + 256, left:left + 256], [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
                   .tobytes())
    return out


def _decode_for(args: tuple[list[bytes], float]) -> int:
    """Decode the JPEGs round and round for `seconds`; returns how many were decoded."""
    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    jpegs, seconds = args
    done, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for data in jpegs:
            cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        done += len(jpegs)
    return done


def decode_rates(images: int, seconds: float) -> dict:
    """OpenCV's full decode of canonical JPEGs: images/s on one core, and on every core (a process each)."""
    jpegs = canonical_jpegs(images)
    cores = os.cpu_count() or 1
    one = _decode_for((jpegs, seconds)) / seconds
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_decode_for, [(jpegs[:8], 0.2)] * cores)  # start every worker first
        start = time.perf_counter()
        counts = pool.map(_decode_for, [(jpegs, seconds)] * cores)
        every = sum(counts) / (time.perf_counter() - start)
    return {"cores": cores, "one_core": one, "every_core": every, "jpeg_kb": sum(map(len, jpegs)) / len(jpegs) / 1024}


def machine() -> dict:
    os.environ["KERAS_BACKEND"] = "jax"  # Keras's version without importing TensorFlow
    info = {"python": platform.python_version(), "cpu_cores": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["gpu"] = smi.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    for module in ("keras", "jax", "jaxlib", "torch", "cv2", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 (absent, or broken: the table says so)
            info[module] = None
    try:
        import torch

        info["cuda"], info["cudnn"] = torch.version.cuda, torch.backends.cudnn.version()
    except Exception:  # noqa: BLE001
        pass
    return info


def child(name: str, batch: int, warmup: int, steps: int, repeats: int) -> dict:
    step, device = (keras_step if name.startswith("keras") else torch_step)(name, batch)
    measured = rates(step, batch, warmup, steps, repeats)
    return {"rates": measured, "images_per_s": statistics.median(measured), "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-images", type=int, default=500)
    parser.add_argument("--decode-seconds", type=float, default=5.0)
    parser.add_argument("--pipeline-fraction", type=float, default=0.63,
                        help="the input pipeline's share of the decode limit (docs/benchmarks.md, photos)")
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--quick", action="store_true", help="batch 4, 2 steps: checks the script, measures nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batches, args.steps, args.warmup, args.repeats = [4], 2, 1, 3
        args.decode_images, args.decode_seconds = 20, 0.5
    if args.child:
        print(json.dumps(child(args.child, args.batches[0], args.warmup, args.steps, args.repeats)))
        return
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, "steps": {}}
    print(json.dumps(results["machine"]), file=sys.stderr, flush=True)
    for batch in args.batches:
        for name in CONFIGS:
            start = time.monotonic()
            done = subprocess.run([sys.executable, __file__, "--child", name, "--batches", str(batch), "--steps",
                                   str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats)],
                                  env=env, capture_output=True, text=True)
            if done.returncode:
                results["steps"][f"{name}@{batch}"] = {"error": done.stderr[-2000:]}
                print(f"{name} at batch {batch} failed:\n{done.stderr[-2000:]}", file=sys.stderr, flush=True)
                continue
            result = results["steps"][f"{name}@{batch}"] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{name:<20} batch {batch:>4} {result['images_per_s']:>9.0f} images/s on {result['device']} "
                  f"({time.monotonic() - start:.0f} s with start-up)", file=sys.stderr, flush=True)
    results["decode"] = decode_rates(args.decode_images, args.decode_seconds)
    report(results, args)  # adds the projection
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def report(results: dict, args) -> None:
    steps, decode = results["steps"], results["decode"]
    print(f"machine: {json.dumps(results['machine'])}")
    print(f"\nAlexNet training step, {SIZE}x{SIZE}, {CLASSES} classes; median of {args.repeats} runs of "
          f"{args.steps} steps after {args.warmup}")
    print(f"{'configuration':<20} {'batch':>5} {'images/s':>9} {'runs':>23} {'vs PyTorch':>11}")
    for key, result in steps.items():
        name, batch = key.split("@")
        if "error" in result:
            print(f"{name:<20} {batch:>5} failed")
            continue
        torch_same = steps.get(f"torch-{name.rsplit('-', 1)[1]}@{batch}", {}).get("images_per_s")
        versus = f"{result['images_per_s'] / torch_same:>10.2f}x" if torch_same else ""
        runs = " ".join(f"{r:.0f}" for r in result["rates"])
        print(f"{name:<20} {batch:>5} {result['images_per_s']:>9.0f} {runs:>23} {versus}")
    feed = decode["every_core"] * args.pipeline_fraction
    print(f"\nhost: OpenCV decodes 256x256 canonical JPEGs ({decode['jpeg_kb']:.1f} KB) at {decode['one_core']:.0f} "
          f"images/s on one core, {decode['every_core']:.0f} on all {decode['cores']}; the input pipeline at "
          f"{args.pipeline_fraction:.2f} of that: {feed:.0f} images/s")
    paper = steps.get("keras-jax-bfloat16@128", {}).get("images_per_s")
    if paper:
        rate = min(paper, feed)
        hours = EPOCHS * IMAGENET / rate / 3600
        results["projection"] = {"step": paper, "input": feed, "rate": rate, "hours": hours}
        print(f"params-paper.yaml (batch 128, bfloat16): step {paper:.0f} images/s, input {feed:.0f}: "
              f"{'the GPU waits for the host' if feed < paper else 'the host keeps up'}; "
              f"{EPOCHS} epochs of {IMAGENET:,} images in {hours:.1f} h")


if __name__ == "__main__":
    main()
