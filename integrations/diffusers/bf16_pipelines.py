"""The bf16 run: pipelines of diffusers' own fast tests (their dummy components and inputs, which build a
DDIMScheduler and need no hub files) run in bfloat16 and in float32, in whichever mode swap.py set. run.py copies this
file into the snapshot's root (so that ``tests.pipelines...`` imports) and runs it like diffusers' own tests.

A case passes when the bf16 image is finite and its mean absolute difference from the float32 image of the same seed is
below 0.05 (images in [0, 1]; the tiny random networks amplify bf16 rounding to ~0.2 at single pixels). DDIMPipeline
is not here: it converts its bf16 output with .numpy(), which torch refuses, with stock diffusers too.
"""
import importlib

import numpy as np
import pytest
import torch

CASES = [
    ("tests.pipelines.kandinsky2_2.test_kandinsky", "KandinskyV22PipelineFastTests"),
    ("tests.pipelines.kandinsky2_2.test_kandinsky_img2img", "KandinskyV22Img2ImgPipelineFastTests"),
]


@pytest.mark.parametrize("module, name", CASES, ids=[c[1] for c in CASES])
def test_bf16_matches_fp32(module, name):
    cls = getattr(importlib.import_module(module), name)
    case = cls()
    images = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = cls.pipeline_class(**case.get_dummy_components()).to(dtype=dtype)
        inputs = case.get_dummy_inputs("cpu")
        inputs["output_type"] = "np"
        images[dtype] = np.asarray(pipe(**inputs)[0], dtype=np.float64)
    assert np.isfinite(images[torch.bfloat16]).all()
    assert np.abs(images[torch.bfloat16] - images[torch.float32]).mean() < 0.05
