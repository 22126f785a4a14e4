"""Prefect flows and the CLI: compose the stage tasks, choose task runners, report artifacts.

The top layer: it may import everything below it, and nothing imports it but `python -m loretune`.
"""
