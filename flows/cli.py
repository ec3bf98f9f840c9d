"""The `alexnet` command: run the flow, one step, the server side, the demo mirror, predictions."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from importlib.metadata import version
from pathlib import Path
from typing import get_args

from tasks.config import Model
from tasks.errors import StepError, describe
from tasks.params import PARAMS_FILE, ConfigError, load_config
from tasks.running import console
from tasks.step import STEP_NAMES

EXIT_FAILED, EXIT_USAGE = 1, 2
DEBUG_ENV = "ALEXNET_DEBUG"  # the --debug switch where arguments cannot be given (dvc repro)


def _params_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=PARAMS_FILE, metavar="FILE", help="params file (default: params.yaml)")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, as in `dvc exp run -S train.epochs=5`; repeatable")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def cmd_run(args) -> int:
    load_config(args.params, args.overrides)  # fail fast, before Prefect starts
    with console.tensorflow_start_up():
        from flows.full import alexnet
    from tasks.running import report

    summaries = alexnet(params_file=args.params, overrides=args.overrides)
    print(report.text(summaries))
    return 0


def cmd_stage(args) -> int:
    from tasks.running import lock
    from tasks.running.task import execute
    from tasks.step import load_step

    cfg = load_config(args.params, args.overrides)
    with console.tensorflow_start_up():
        module = load_step(args.name)
    with lock.held(Path.cwd(), f"alexnet stage {args.name}", cfg.run.lock_timeout_s):
        summary = execute(module.STEP, module.run, cfg, Path.cwd(), "alexnet stage")
    print(f"alexnet stage {args.name}: done in {summary['seconds']} s")
    return 0


def cmd_serve(args) -> int:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.full import alexnet

    # One run at a time, the rest queued (not cancelled): the UI shows them waiting for their turn.
    alexnet.serve(name=args.name, global_limit=ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE))
    return 0


def cmd_mirror(args) -> int:
    from tasks.acquire import mirror

    cfg = load_config(args.params, args.overrides)
    host, port = mirror.host_port(cfg.data.url_list_endpoint)
    server = mirror.Mirror(args.host or host, port if args.port is None else args.port)
    print(f"serving the demo source at {server.endpoint()} (Ctrl-C to stop)", flush=True)
    with server:
        try:
            server.thread.join()
        except KeyboardInterrupt:
            pass
    return 0


def cmd_predict(args) -> int:
    with console.tensorflow_start_up():
        from tasks.learning.predict import classify, table

    model_path = Path(args.model)
    for required in (model_path, model_path.with_suffix(".json")):
        if not required.is_file():
            raise StepError(f"not found: {required} (train a model with `alexnet run` or `dvc repro`)")
    results = classify(args.images, args.model, args.top, args.ten_crop)
    for r in results:
        if "error" in r:
            print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
        else:
            print(table(r))
    return 0 if any("top" in r for r in results) else EXIT_FAILED


def cmd_images(args) -> int:
    import itertools

    from tasks.storage.extract import copy_out, matching

    rows = matching(Path.cwd(), "canonical" if args.canonical else "downloaded", args.classes, args.digests,
                    args.subset)
    if args.out:
        written = copy_out(itertools.islice(rows, args.limit), Path.cwd(), Path(args.out))
        print(f"{len(written)} image{'s' if len(written) != 1 else ''} written under {Path(args.out)}/ "
              "(<class>/<sha256>.<ext>)")
        return 0 if written else EXIT_FAILED
    shown = list(itertools.islice(rows, args.limit or 20))
    for row in shown:
        print(f"{row['class']:<16} {row['sha256'][:16]}  {row['shard']}  {row['size']:>8} bytes")
    total = len(shown) + sum(1 for _ in rows)
    print(f"{total} image{'s match' if total != 1 else ' matches'}"
          + (f" ({len(shown)} shown; --limit N to see more, --out DIR to extract)" if total > len(shown) else ""))
    return 0 if total else EXIT_FAILED


def cmd_model(args) -> int:
    with console.tensorflow_start_up():
        from tasks.learning.model import build

    build(args.classes, variant=args.variant, input_size=args.input_size, width=args.width, init=args.init).summary()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alexnet", description=__doc__)
    p.add_argument("--version", action="version", version=f"alexnet {version('alexnet-dag')}")
    p.add_argument("--debug", action="store_true",
                   help=f"show tracebacks with error messages (or set {DEBUG_ENV}=1, e.g. for dvc repro)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="one of these; `alexnet COMMAND --help` tells more")

    run = sub.add_parser("run", help="run the whole pipeline as a Prefect flow in this terminal")
    _params_args(run)
    run.set_defaults(func=cmd_run)

    stage = sub.add_parser("stage", help="run one step (what dvc.yaml's stages call)")
    stage.add_argument("name", choices=STEP_NAMES, metavar="NAME", help=f"the step: {', '.join(STEP_NAMES)}")
    _params_args(stage)
    stage.set_defaults(func=cmd_stage)

    serve = sub.add_parser("serve", help="register the deployment alexnet/full and execute its runs")
    serve.add_argument("--name", default="full", help="deployment name (default: full)")
    serve.set_defaults(func=cmd_serve)

    mirror = sub.add_parser("mirror", help="serve the embedded demo image source")
    _params_args(mirror)
    mirror.add_argument("--host", help="address to bind (default: from data.url_list_endpoint)")
    mirror.add_argument("--port", type=int, help="port (default: from data.url_list_endpoint; 0 picks a free one)")
    mirror.set_defaults(func=cmd_mirror)

    predict = sub.add_parser("predict", help="classify images with the trained model")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="an image file (any format OpenCV reads)")
    predict.add_argument("--model", default="models/alexnet.h5", help="model file (default: models/alexnet.h5)")
    predict.add_argument("--top", type=_positive, default=1, metavar="K", help="classes to show per image (default: 1)")
    predict.add_argument("--ten-crop", action="store_true",
                         help="average the paper's ten crops instead of using the centre crop")
    predict.set_defaults(func=cmd_predict)

    images = sub.add_parser("images", help="list stored images, or extract them from their shards into a folder")
    images.add_argument("--class", dest="classes", action="append", metavar="CLASS",
                        help="only this class; repeatable")
    images.add_argument("--digest", dest="digests", action="append", metavar="SHA256",
                        help="only the image whose SHA-256 starts so; repeatable")
    images.add_argument("--canonical", action="store_true",
                        help="the augment step's canonical images (data/augment) instead of the downloads")
    images.add_argument("--subset", choices=["train", "validation"],
                        help="only this subset, as the split step assigned it (data/split.csv)")
    images.add_argument("--limit", type=_positive, metavar="N",
                        help="at most N images (default: all with --out, 20 listed otherwise)")
    images.add_argument("--out", metavar="DIR", help="write the images to DIR/<class>/<sha256>.<ext>")
    images.set_defaults(func=cmd_images)

    model = sub.add_parser("model", help="print the AlexNet model summary")
    model.add_argument("--variant", default=Model().variant, choices=get_args(Model.model_fields["variant"].annotation),
                       help="the paper's AlexNet, or the simplified Keras one (default: %(default)s)")
    model.add_argument("--classes", type=_positive, default=1000, metavar="N",
                       help="number of classes it tells apart (default: 1000)")
    model.add_argument("--width", type=float, default=1.0, help="scale of every layer's width (1.0: the paper)")
    model.add_argument("--init", default=Model().init, choices=get_args(Model.model_fields["init"].annotation),
                       help="initialisation of the paper variant")
    model.add_argument("--input-size", type=_positive, default=227, metavar="PIXELS",
                       help="side of the square input image (default: 227)")
    model.set_defaults(func=cmd_model)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    debug = args.debug or bool(os.environ.get(DEBUG_ENV))
    console.setup(debug)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        line = describe(exc)
        if line is None:
            raise  # not a mistake a person can fix here: the traceback is for a bug report
        if debug:
            traceback.print_exc()
        if isinstance(exc, ConfigError):
            print(f"alexnet: {line}", file=sys.stderr)
            return EXIT_USAGE
        command = f"stage {args.name}" if args.command == "stage" else args.command
        print(f"alexnet {command}: {line}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
