"""ComfyUI custom nodes: gmm-triton's DDIM / DDIM-GMM and RFIM / RFIM-GMM samplers (SAMPLER outputs).

Install: copy or link this folder into ``ComfyUI/custom_nodes/`` and ``pip install gmm-triton`` in ComfyUI's Python.
ComfyUI's loader imports this package and reads NODE_CLASS_MAPPINGS; ``comfy`` itself is imported only when a node
runs, inside ComfyUI.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
