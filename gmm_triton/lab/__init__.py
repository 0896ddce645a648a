"""The lab: applications built on the runtime library (``pip install "gmm-triton[demo]"``).

The exact oracle denoisers (``oracle``), sample-quality metrics (``metrics``), learned models (``models``), the named
samplers and their metrics rows (``sampling``), the demo and eval sweeps (``demo``, ``gddim_demo``), sharded sampling
(``generate``), distillation (``distill``) and the evidence on real digits with trained diffusers UNets
(``evidence``, ``make evidence``). Arrows point one way: the lab imports the library (``gmm_triton``),
never the tools, and the library never imports the lab (``tests/test_layers.py``).
"""
