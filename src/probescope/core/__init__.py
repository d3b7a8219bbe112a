"""The ground floor: sites and hooks, capture, store, io, progress, threads, data readers, models.

Nothing in `core/` imports a feature wing (probes, sae, exit, steering, patching, finetune, ...).
"""
