"""How images are kept and found: tar shards and their indexes, file digests keyed by
stat (and atomic writes), canonical images, and copying images out of shards.

May use: the contract only (paths, errors, config).
"""
