"""Checkpoints -> scores: binary-choice scoring, the gate that promotes, before/after answers, sweep comparison.

Imports the model, dataset, multimodal and the core; never the training loop, export, chat, Prefect, tasks or flows.
"""
