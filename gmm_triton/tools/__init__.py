"""The tools: kernel-engineering instruments on top of the runtime library.

The compile matrix (``aot``, ``aot_cases``, ``gddim_aot_cases``: every launch specialisation compiled for sm_80,
sm_90a and sm_100a with triton's compiler and bundled ptxas), ``inspect`` (static numbers and predicted bandwidth)
and ``bench`` (measured throughput and latency). This is the only code that touches Triton's private APIs. The
tools import the library, and the lab only for the end-to-end benchmark's oracle model; the library never imports
the tools (``tests/test_layers.py``).
"""
