"""The training loop: SFT with TRL + PEFT, the backends, the unsloth worker process, resumable scratch folders.

Imports the model, dataset, multimodal and the core; never evaluation, export, chat, Prefect, tasks or flows.
"""
