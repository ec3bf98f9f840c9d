"""Where each step reads and writes, relative to the working directory.

These names are the contract between the steps, dvc.yaml and the CLI.
"""

STATE = ".alexnet"  # the pipeline's own state: results, download records, checkpoints
SUMMARIES = "summaries"  # <step>.json: the run that made a step's outputs (its cache key, digests, summary)
URLS = "data/urls"  # <class>.txt, one URL per line
IMAGES = "data/images"  # the kept images as shards (<id>.tar, members <class>/<sha256>.<ext>), index.csv
IMAGE_INDEX = f"{IMAGES}/index.csv"  # one row per kept image: where it is (shard, offset, size), class, URL
CLASS_NAMES = f"{IMAGES}/classes.csv"  # class, wnid, name: each class's human-readable name
MANIFEST = "data/manifest.csv"  # one row per (class, URL)
SPLIT = "data/split.csv"  # the image index, plus each image's subset
AUGMENTED = "data/augment"  # canonical images as shards (<subset>-<n>.tar), index.csv, stats.json
AUGMENT_INDEX = f"{AUGMENTED}/index.csv"
STATS = f"{AUGMENTED}/stats.json"
AUGMENT_PLOT = "plots/augmentation.png"
MODEL = "models/alexnet.h5"
MODEL_CARD = "models/alexnet.json"  # classes, input, normalisation, params, data digests
EVAL_CARD = "models/alexnet.card.json"  # the model card with its evaluation
HISTORY = "metrics/history.csv"
LOGS = "logs"
EVAL = "metrics/eval.json"  # headline figures
CLASS_SCORES = "metrics/classes.csv"  # per class: precision, recall, F1, support (weakest first)
CONFUSION = "plots/confusion.csv"
CONFUSION_PLOT = "plots/confusion.png"
PREDICTIONS_PLOT = "plots/predictions.png"
