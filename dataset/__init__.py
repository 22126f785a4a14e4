"""Documents -> chat examples and evaluation sets: pages, builders, near-duplicates, the mix, the card, eval-set building.

Knows no model: imports ingest, multimodal and the core only; never model, training, evaluation, export, chat, Prefect, tasks or flows.
"""
