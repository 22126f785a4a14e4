"""Sources -> documents: the polite HTTP client and the Fandom, Reddit, YouTube and Sportskeeda readers.

Imports only the core (settings, fingerprints, the store); never a later stage, Prefect, tasks or flows.
"""
