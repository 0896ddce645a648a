"""A CUDA device on a CPU-only machine, for proving that a code path reads nothing back from the device.

Inside :class:`FakeCuda`, tensors on ``cuda:0`` are FakeTensors: they have shapes, dtypes and strides but no data.
Every way data can travel from the device to the host raises :class:`HostRead`, exactly where a real GPU run would
synchronise: ``.item()`` / ``bool(t)`` / ``float(t)`` (``_local_scalar_dense``), ``.cpu()`` / ``.to("cpu")``
(``_to_copy``), ``copy_`` into a host tensor, ``.tolist()``, ``nonzero`` and other data-dependent shapes. Host
tensors stay real, so host work on host data (tables built with numpy, the C++ Philox of a mixture's offsets) runs
as it would for real, and host-to-device copies are allowed. Kernel launches never happen: the custom op's fake
kernel stands in for them (or a test replaces the Triton kernels with recorders).
"""
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("cuda:0")  # with an index: "cuda" alone would ask the (absent) driver for the current one
_aten = torch.ops.aten


class HostRead(RuntimeError):
    """A device value would reach the host here: on a GPU this line synchronises."""


def _device_to_host(func, args, kwargs) -> bool:
    """Whether this aten call moves device (fake) data to a host tensor."""
    if func is _aten._local_scalar_dense.default:  # .item(), bool(), float(), .tolist()
        return isinstance(args[0], FakeTensor)
    if func is _aten._to_copy.default:
        dev = kwargs.get("device")
        return isinstance(args[0], FakeTensor) and dev is not None and torch.device(dev).type == "cpu"
    if func in (_aten.copy_.default, _aten.copy.default):
        dst, src = args[0], args[1]
        return isinstance(src, FakeTensor) and not isinstance(dst, FakeTensor) and dst.device.type == "cpu"
    return False


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
        if _device_to_host(func, args, kwargs):
            raise HostRead(f"{func} reads device data on the host (a device-to-host copy: a sync on a GPU)")
        dev = kwargs.get("device")
        if (dev is not None and torch.device(dev).type == "cuda") or any(
                isinstance(a, FakeTensor) for a in pytree.arg_tree_leaves(*args, **kwargs)):
            with self.fake:
                return func(*args, **kwargs)
        return func(*args, **kwargs)  # host op on host tensors: runs for real

    def cuda(self, t: torch.Tensor) -> torch.Tensor:
        """A device copy of t (shape, dtype, strides; no data)."""
        return FakeTensor(self.fake, t.to("meta"), DEVICE)
