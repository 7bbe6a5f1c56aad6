"""The base every other package of ours stands on; it imports nothing of ours.

Layering: isic_common <- isic_drivers <- isic_station <- isic_model / isic_plant (each package imports
only from the ones to its left; tests/foundation/test_layering.py checks it). Here: the error types and
exit codes (`errors`), retry delays (`backoff`), the console commands' shared machinery
(`command_line`) and the one percentile every latency figure is quoted with (`percentile`).
"""
