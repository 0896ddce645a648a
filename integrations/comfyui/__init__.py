"""ComfyUI custom nodes: gmm-triton's DDIM / DDIM-GMM and RFIM / RFIM-GMM samplers (SAMPLER outputs), and
``ddim_gmm`` in the plain KSampler's sampler list.

Install: copy or link this folder into ``ComfyUI/custom_nodes/`` and ``pip install gmm-triton`` in ComfyUI's Python.
ComfyUI's loader imports this package and reads NODE_CLASS_MAPPINGS; ``comfy`` is imported here only to add the list
entry (nodes.register_ksampler_entry), and skipped outside ComfyUI.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_ksampler_entry

register_ksampler_entry()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
