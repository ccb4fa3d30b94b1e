"""Active-learning benchmark: pool-based labeling cycles with the service's own model code.

Modules: ``dataset`` (offline digit scenes as COCO json + PNG; VOC and COCO
through torchvision), ``strategies`` (random, entropy, CALD-style, HUA, HUA +
k-center), ``loop`` (the simulation, worker processes, the CSV), ``report``
(tables, paired comparison with random, plot), ``configs`` (``quick``,
``paper``, ``tiny``). Run ``python -m bench.active_learning --help``.
"""
