"""loretune: fandom lore in, fine-tuned and evaluated chat model out. This folder is the shared core:
config, settings, fingerprints, import graph, hashing, stats, the artifact store, the stack, the sample server.

The core imports no stage (ingest ... chat) and never Prefect's task layer (tasks/, flows/).
"""
