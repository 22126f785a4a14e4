"""The Gradio chat UI over every servable model in the store: its catalogue, transformers and llama.cpp backends, speech, pictures.

Imports export (its layout), evaluation (scores), the model, multimodal and the core; never the training loop, Prefect, tasks or flows.
"""
