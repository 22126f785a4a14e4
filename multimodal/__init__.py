"""Images -> CLIP features, and the projector that fuses them into a model's embeddings.

Imports only the core; never the dataset, model, training, evaluation, export or chat packages, Prefect, tasks or flows.
"""
