"""Where and how steps run: the Prefect task over a step and its content-keyed cache,
task runners for chunks (threads, processes, Dask), the project lock, DVC commits after
a flow run, console and UI reports, progress bars, what a command shows in the terminal.

May use: `tasks.storage` and the contract. Not the other wings.
"""
