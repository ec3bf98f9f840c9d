"""The pipeline: the six steps in front, what they stand on in wings behind them.

    fetch_urls, download, split, augment, train, evaluate   the steps (= dvc.yaml's stages)
    step, config, params, synsets, paths, errors             the contract they share
    acquire/   where images come from: sources, archives, HTTP, the downloader, the demo mirror
    learning/  the model, the input pipeline, prediction
    running/   where and how steps run: the Prefect task and its cache, runners, the lock, DVC
    storage/   how images are kept and found: shards, file digests, canonical images

Imports only go down: a step may use any wing; a wing uses storage and the contract;
storage uses only the contract (docs/architecture.md).
"""
