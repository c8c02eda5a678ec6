"""The live runtime: miniatures, the offline tokenizer, model loading and placement, streaming generation,
the GPU fast path, router hooks and routing statistics, memory and depth checks of loaded models, the run
registry (ids, links, per-visitor quotas) and the allowed model folders.

May import ``backend.arch``; never ``train`` or ``present``.
"""
