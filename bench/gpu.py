"""AlexNet's training speed on a GPU: the project's Keras model on JAX against PyTorch, bfloat16 and float32.

Needs Keras 3, JAX and PyTorch only, not TensorFlow (a GPU machine often has those
and not TensorFlow): the project's model (`tasks/learning/model.py`, written with
`keras.ops` alone) is built with `KERAS_BACKEND=jax` and trained with the paper's
SGD on synthetic 227x227 batches held on the device, in float32 and with Keras's
`mixed_bfloat16` policy; a PyTorch AlexNet of the same architecture (60,965,224
parameters, `bench/train_step.py`) is trained the same way in float32 and under
bfloat16 autocast, channels-last, cuDNN's autotuner on. Each configuration runs
in a process of its own; every step reads its loss back, as a loop that logs its
loss would. Prints images per second and the ratio of Keras/JAX to PyTorch at each
precision; on one GPU the whole run takes a few minutes (compiling included).

    python bench/gpu.py [--batch 256] [--steps 50] [--warmup 10]
    python bench/gpu.py --quick          # a tiny run, to check the script on a CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from train_step import timed  # bench/, the folder of this script, is first on its path

REPO = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 227, 1000
CONFIGS = {
    "keras-jax-float32": "the project's model, Keras 3 on JAX, float32 (XLA-compiled train step)",
    "keras-jax-bfloat16": "the same, Keras's mixed_bfloat16 policy",
    "torch-float32": "PyTorch AlexNet, float32, channels-last",
    "torch-bfloat16": "PyTorch AlexNet, bfloat16 autocast, channels-last",
}


def keras_rate(name: str, batch: int, warmup: int, steps: int) -> dict:
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
    rate = timed(lambda: net.train_on_batch(x, y), batch, warmup, steps)  # returns the loss, read back
    return {"images_per_s": rate, "device": str(jax.devices()[0])}


def torch_rate(name: str, batch: int, warmup: int, steps: int) -> dict:
    import torch
    from torch import nn
    from train_step import torch_alexnet

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    net = torch_alexnet().to(device, memory_format=torch.channels_last)
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

    name_of = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"images_per_s": timed(step, batch, warmup, steps), "device": name_of}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="batch 4, 2 steps: checks the script, measures nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.steps, args.warmup = 4, 2, 1
    if args.child:
        measure = keras_rate if args.child.startswith("keras") else torch_rate
        print(json.dumps(measure(args.child, args.batch, args.warmup, args.steps)))
        return
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false", "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = {}
    for name in CONFIGS:
        start = time.monotonic()
        done = subprocess.run([sys.executable, __file__, "--child", name, "--batch", str(args.batch), "--steps",
                               str(args.steps), "--warmup", str(args.warmup)], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:<20} {results[name]['images_per_s']:>9.0f} images/s on {results[name]['device']} "
              f"({time.monotonic() - start:.0f} s with start-up)", file=sys.stderr, flush=True)
    print(f"AlexNet training step, batch {args.batch}, {SIZE}x{SIZE}, {CLASSES} classes, {args.steps} steps "
          f"after {args.warmup}")
    print(f"{'configuration':<20} {'images/s':>9} {'vs PyTorch':>11}")
    for name, result in results.items():
        torch_same = results[f"torch-{name.rsplit('-', 1)[1]}"]["images_per_s"]
        print(f"{name:<20} {result['images_per_s']:>9.0f} {result['images_per_s'] / torch_same:>10.2f}x   "
              f"{CONFIGS[name]}")


if __name__ == "__main__":
    main()
