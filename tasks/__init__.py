"""Prefect tasks, one module per stage: caching, retries, versioned storage, artifacts, config -> plain values.

Tasks are thin and import the stage libraries and the core; they never import flows/.
"""
