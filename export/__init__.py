"""A promoted checkpoint -> adapter, merged weights and GGUF, checked for parity; the export folder's layout.

Imports the model, evaluation, multimodal and the core; never the training loop, the dataset builders, chat, Prefect, tasks or flows.
"""
