"""Where images come from, and how they are fetched and judged.

The sources that list a class's images (ImageNet's endpoint, URL lists, web pages,
archives, the ILSVRC-2012 files, local folders), HTTP under address rules and limits
(`web`, on libcurl: `curl`), the download of a chunk and its on-disk ledger, image
validation, and the embedded demo mirror with its generated photos.

May use: `tasks.storage` and the contract (config, paths, errors). Not the other wings.
"""
