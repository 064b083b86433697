"""Sweeps: a config's `get_hyper()` expanded into named variants, run, followed and compared.

`hyper` expands and names, `state` reads what each variant did, `runner` runs (locally or on TPU
slices), `report` compares, `main` is `zppo sweep`.
"""
