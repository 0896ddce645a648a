"""A CUDA device on a CPU-only machine, for proving that a code path reads nothing back from the device.

Inside :class:`FakeCuda`, tensors on ``cuda:0`` are FakeTensors: they have shapes, dtypes and strides but no data,
so any host read of one (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu().numpy()``, ``nonzero``) raises, exactly
where a real GPU run would synchronise. Host tensors stay real, so host work on host data (tables built with numpy,
the C++ Philox of a mixture's offsets) runs as it would for real. Kernel launches never happen: the custom op's
fake kernel stands in for them (or a test replaces the Triton kernels with recorders).
"""
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("cuda:0")  # with an index: "cuda" alone would ask the (absent) driver for the current one


class FakeCuda(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.fake = FakeTensorMode(allow_non_fake_inputs=True)

    def __enter__(self):
        torch._C._ensureCUDADeviceGuardSet()  # as FakeTensorMode does: no CUDA initialisation on a CPU-only torch
        self._lazy_init, torch.cuda._lazy_init = torch.cuda._lazy_init, lambda: None  # .to("cuda") reaches the mode
        return super().__enter__()

    def __exit__(self, *exc):
        torch.cuda._lazy_init = self._lazy_init
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dev = kwargs.get("device")
        if (dev is not None and torch.device(dev).type == "cuda") or any(
                isinstance(a, FakeTensor) for a in pytree.arg_tree_leaves(*args, **kwargs)):
            with self.fake:
                return func(*args, **kwargs)
        return func(*args, **kwargs)  # host op on host tensors: runs for real

    def cuda(self, t: torch.Tensor) -> torch.Tensor:
        """A device copy of t (shape, dtype, strides; no data)."""
        return FakeTensor(self.fake, t.to("meta"), DEVICE)
