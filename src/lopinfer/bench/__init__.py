"""Benchmark helpers: the edge lab (``lab``) and synthetic link traces (``traces``).

Import the submodules directly (``from lopinfer.bench import lab``); nothing is imported
here so that ``import lopinfer.bench`` stays free of side effects.
"""
