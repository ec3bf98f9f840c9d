"""Training images per second of the paper's AlexNet on the CPU: Keras/TensorFlow vs PyTorch.

Full width, 227x227 inputs, 1000 classes, batch 64, SGD with momentum: one
training step (forward, backward, update) on a fixed random batch, after warm-up
steps. Each configuration runs in a process of its own (thread pools and oneDNN
are set at start-up), and the rounds interleave the configurations (A B C, A B C),
since timings on a shared machine drift. Ratios are against PyTorch in float32.

    python bench/train_step.py                    # every configuration, 2 rounds
    python bench/train_step.py --only keras torch --rounds 3 --batch 128

Configurations: `keras` is the project's model (tasks/learning/model.py) as training runs
it; the others change one thing each, to show what it costs or gains.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 227, 1000
BATCH = 64  # --batch changes it, in this process and its children

CONFIGS = {
    "torch": "PyTorch, float32, NCHW (the baseline)",
    "torch-channels-last": "PyTorch, float32, channels-last memory format",
    "keras": "Keras/TF, the project's model, float32",
    "keras-grouped-conv": "Keras/TF with Keras's own Conv2D(groups=2) (TF's grouped-conv CPU kernel)",
    "keras-slice-lrn": "Keras/TF with LRN as a sum of shifted slices and ops.power",
    "keras-xla": "Keras/TF, jit_compile=True (XLA on CPU)",
    "keras-inter-op-1": "Keras/TF, one inter-op thread",
    "keras-no-onednn": "Keras/TF, TF_ENABLE_ONEDNN_OPTS=0",
    "torch-bf16": "PyTorch, bfloat16 autocast",
    "keras-bf16": "Keras/TF, mixed_bfloat16 policy",
}


def torch_alexnet(classes: int = CLASSES):
    """The paper's AlexNet in PyTorch, layer for layer the project's (tasks/learning/model.py)."""
    from torch import nn

    def conv(cin, cout, k, groups=1, **kw):
        return [nn.Conv2d(cin, cout, k, groups=groups, **kw), nn.ReLU()]

    # PyTorch's LRN divides alpha by the window size: 5e-4 / 5 = the paper's 1e-4.
    lrn = lambda: nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # noqa: E731
    net = nn.Sequential(
        *conv(3, 96, 11, stride=4), lrn(), nn.MaxPool2d(3, 2),
        *conv(96, 256, 5, groups=2, padding=2), lrn(), nn.MaxPool2d(3, 2),
        *conv(256, 384, 3, padding=1), *conv(384, 384, 3, groups=2, padding=1),
        *conv(384, 256, 3, groups=2, padding=1), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(4096, classes))
    if classes == 1000:
        assert sum(p.numel() for p in net.parameters()) == 60_965_224
    return net


def torch_rate(name: str, warmup: int, steps: int) -> float:
    import torch
    from torch import nn

    net = torch_alexnet()
    x, y = torch.rand(BATCH, 3, SIZE, SIZE) * 255, torch.randint(0, CLASSES, (BATCH,))
    if name == "torch-channels-last":
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "torch-bf16"):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()

    return timed(step, BATCH, warmup, steps)


def slice_lrn(self, x):
    """LRN as first written: five shifted slices of the padded squares, then ops.power."""
    from keras import ops

    half = self.depth // 2
    squared = ops.pad(ops.square(x), [[0, 0], [0, 0], [0, 0], [half, half]])
    window = sum(squared[..., i : i + x.shape[-1]] for i in range(self.depth))
    return x / ops.power(self.k + self.alpha * window, self.beta)


def keras_rate(name: str, warmup: int, steps: int) -> float:
    import keras
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(REPO))
    from tasks.learning import model

    if name == "keras-inter-op-1":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if name == "keras-grouped-conv":
        model.GroupedConv2D = keras.layers.Conv2D
    if name == "keras-slice-lrn":
        model.LocalResponseNorm.call = slice_lrn
    if name == "keras-bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    net = model.build(CLASSES, mean=[120.0] * 3, std=[60.0] * 3)
    assert net.count_params() == 60_965_224
    net.compile(model.PaperSGD(0.01, momentum=0.9, l2=5e-4), keras.losses.SparseCategoricalCrossentropy(),
                jit_compile=name == "keras-xla")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (BATCH, SIZE, SIZE, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, CLASSES, BATCH))
    return timed(lambda: net.train_on_batch(x, y), BATCH, warmup, steps)


def timed(step, batch: int, warmup: int, steps: int) -> float:
    """Images per second of `step` on batches of `batch`, after `warmup` steps."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def measure(name: str, warmup: int, steps: int) -> float:
    """Images per second of `name`, in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if name == "keras-no-onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    args = [sys.executable, __file__, "--child", name, "--warmup", str(warmup), "--steps", str(steps),
            "--batch", str(BATCH)]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    global BATCH
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(CONFIGS), help="configurations to run (torch always runs)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    BATCH = args.batch
    if args.child:
        rate = (torch_rate if args.child.startswith("torch") else keras_rate)(args.child, args.warmup, args.steps)
        print(json.dumps({"images_per_s": rate}))
        return
    names = ["torch", *[n for n in (args.only or CONFIGS) if n != "torch"]]
    rates = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            rates[name].append(measure(name, args.warmup, args.steps))
            print(f"round {r + 1}: {name:<20} {rates[name][-1]:6.1f} images/s", file=sys.stderr, flush=True)
    base = statistics.median(rates["torch"])
    print(f"AlexNet training step, batch {BATCH}, {SIZE}x{SIZE}, {CLASSES} classes, CPU, "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'configuration':<20} {'images/s':>9} {'vs torch':>9}  rounds")
    for name in names:
        median = statistics.median(rates[name])
        print(f"{name:<20} {median:>9.1f} {median / base:>8.2f}x  {' '.join(f'{v:.1f}' for v in rates[name])}"
              f"   {CONFIGS[name]}")


if __name__ == "__main__":
    main()
