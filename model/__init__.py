"""What every stage after the dataset shares: base models, the tiny model, the chat format, loading a base with a checkpoint, the checkpoint layout, the collator.

Imports multimodal and the core only; never the dataset, training, evaluation, export, chat, Prefect, tasks or flows.
"""
