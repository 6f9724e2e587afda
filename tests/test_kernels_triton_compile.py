"""Every @triton.jit kernel of `kernels`, compiled to PTX and cubin for sm_80 and sm_90, without a GPU.

Why: the interpreter tests (test_kernels_triton.py) check the arithmetic but never run Triton's compiler,
so a kernel that fails to lower for a dtype, block size or int64 stride, or that spills registers, would
first show on a GPU. How: the library's launchers (entropy_triton.forward/backward) run on meta tensors
under a stand-in driver that names the target, and each `kernel[grid](...)` becomes `kernel.warmup(...)`,
which specialises the arguments as a launch does (int64 strides, divisibility by 16, T = 1 made a
constant) and runs ttir → ttgir → llir → ptx → cubin with the ptxas shipped in the Triton wheel; each
target gets a fresh TRITON_CACHE_DIR and cleared in-memory caches. Cases: fp32 / bf16 / fp16 ×
V = 123, 4099, 151936 × LAYOUTS. Fails on a compile error, on a spill or stack frame in ptxas's report
(the driver's n_spills), and on a kernel of `kernels` that no case launches.
The last test checks that launches run on the logits' device, not the current one (--device cuda:1).
"""
import contextlib
import importlib
import io
import os
import pkgutil
import re
from dataclasses import dataclass

import pytest
import torch
from torch.overrides import TorchFunctionMode

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402

import kernels  # noqa: E402
from kernels import entropy_triton  # noqa: E402
from kernels.entropy import _rows_view  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                                reason="compiles real kernels; TRITON_INTERPRET=1 replaces them by the interpreter")

TARGETS = [GPUTarget("cuda", 80, 32), GPUTarget("cuda", 90, 32)]  # A100; H100 / H200
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# _block(V): (128, 4 warps); (4096, 8 warps) with a ragged tail; (4096, 8 warps) with V % 16 = 0 (Qwen2.5)
VOCABS = [123, 4099, 151936]
LAYOUTS = {  # logits [..., V] as the library meets them, launched on the (B, T, V) view of _rows_view [D7]
    "rows": lambda V, dtype: _meta(6, V, dtype=dtype),  # (N, V) of a decoding step -> (1, 6, V)
    "slice": lambda V, dtype: _meta(2, 7, V, dtype=dtype)[:, 2:-1],  # logits[:, P-1:-1]: x_ptr offset by 2·V
    "one_row": lambda V, dtype: _meta(1, V, dtype=dtype),  # (1, 1, V): T = 1 becomes a compile-time constant
    "int64_strides": lambda V, dtype: _meta(2, 2**31 // V + 2, V, dtype=dtype)[:, 1:],  # stride_b > 2^31 [T1]
}
PTXAS_REPORT = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads\s*\n"
                          r"[^\n]*Used (\d+) registers")


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _entropy_forward_and_backward(logits):
    """Both launchers, with the inputs kernels/entropy.py gives them: ids int64, keep bool, stats fp32."""
    x = _rows_view(logits)  # (B, T, V)
    B, T, _ = x.shape
    ids = _meta(B, T, dtype=torch.int64)
    keep = _meta(B, T, dtype=torch.bool)
    logp, entropy, m, log_s = entropy_triton.forward(x, ids, 1.0)  # each (B, T) fp32
    entropy_triton.backward(x, ids, keep, m, log_s, entropy, torch.empty_like(logp), torch.empty_like(logp), 1.0)


CASES = {f"entropy {str(dtype)[6:]} V={V} {layout}": (_entropy_forward_and_backward, make, V, dtype)
         for dtype in DTYPES for V in VOCABS for layout, make in LAYOUTS.items()}


def jit_kernels():
    """Every @triton.jit kernel defined in the kernels package, by qualified name."""
    found = {}
    for info in pkgutil.walk_packages(kernels.__path__, "kernels."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.JITFunction) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


class _StandInDriver:
    """What JITFunction.run asks the active driver before it compiles; no GPU behind it."""

    def __init__(self, target):
        self.target = target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 0

    def get_current_target(self):
        return self.target


class _CudaPointers(TorchFunctionMode):
    """data_ptr of a meta tensor as a CUDA allocation gives it (a 256-aligned base plus the view's offset),
    so that a slice loses the divisibility-by-16 specialisation of its pointer as it does on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") == "data_ptr":
            return 2**20 + args[0].storage_offset() * args[0].element_size()
        return func(*args, **(kwargs or {}))


@dataclass
class Compiled:
    case: str
    kernel: object  # the JITFunction
    binary: object  # triton.compiler.CompiledKernel
    registers: int
    spill_bytes: int  # ptxas -v: spill stores + spill loads
    stack_bytes: int  # ptxas -v: stack frame, local memory; the driver's n_spills is this / 4


class _WarmupLaunches:
    """kernel[grid](...) compiles (warmup) instead of launching; each compile's ptxas report is parsed."""

    def __init__(self):
        self.case, self.compiled, self._reports = None, [], {}

    def launcher(self, kernel, grid):
        def launch(*args, **kwargs):
            log = io.StringIO()
            with contextlib.redirect_stdout(log), _CudaPointers():  # TRITON_DUMP_PTXAS_LOG prints to stdout
                binary = kernel.warmup(*args, grid=grid, **kwargs)
            reports = PTXAS_REPORT.findall(log.getvalue())
            if binary.hash not in self._reports:  # a first compile must have run ptxas, not hit a cache
                assert len(reports) == 1, f"{self.case}: no ptxas report in the compile log:\n{log.getvalue()}"
                stack, spill_stores, spill_loads, registers = map(int, reports[0])
                self._reports[binary.hash] = registers, spill_stores + spill_loads, stack
            self.compiled.append(Compiled(self.case, kernel, binary, *self._reports[binary.hash]))
        return launch


@pytest.fixture
def stand_in_gpu(monkeypatch, tmp_path):
    """use(target) -> _WarmupLaunches: a fresh cache and driver for that target; all restored afterwards."""
    found = jit_kernels()

    def use(target):
        monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / f"cache_sm{target.arch}"))
        monkeypatch.setenv("TRITON_DUMP_PTXAS_LOG", "1")
        assert triton.knobs.cache.dir == str(tmp_path / f"cache_sm{target.arch}")
        monkeypatch.setattr(triton.runtime.driver, "_active", triton.runtime.driver._active)  # restore on exit
        triton.runtime.driver.set_active(_StandInDriver(target))
        for kernel in found.values():
            kernel.device_caches.clear()  # in-memory kernels and binder of the previous target
        launches = _WarmupLaunches()
        monkeypatch.setattr(triton.runtime.KernelInterface, "__getitem__", lambda k, grid: launches.launcher(k, grid))
        return launches

    yield use
    for kernel in found.values():  # no stand-in target's kernels left for a later real launch
        kernel.device_caches.clear()


def _spilled(compiled):
    return [f"{c.case} {c.kernel.__name__}: {c.registers} registers, {c.spill_bytes} bytes spilled, "
            f"{c.stack_bytes} bytes stack" for c in compiled if c.spill_bytes or c.stack_bytes]


def _spec(c, arg):
    """How the launch specialised one argument: its type, and ' %16' when marked divisible by 16."""
    attrs = c.binary.src.attrs.get((c.kernel.arg_names.index(arg),), [])
    return c.binary.src.signature[arg] + (" %16" if ["tt.divisibility", 16] in attrs else "")


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"sm{t.arch}")
def test_every_triton_kernel_compiles_to_cubin_without_spills(target, stand_in_gpu):
    gpu = stand_in_gpu(target)
    for case, (launch, make, V, dtype) in CASES.items():
        gpu.case = case
        try:
            launch(make(V, dtype))
        except Exception as error:
            raise AssertionError(f"{case}: does not compile for sm_{target.arch}") from error

    launched = {id(c.kernel) for c in gpu.compiled}
    found = jit_kernels()
    assert found, "no @triton.jit kernel found in the kernels package"
    missing = [name for name, kernel in found.items() if id(kernel) not in launched]
    assert not missing, f"kernels with no compile case (add one to CASES): {missing}"
    for c in gpu.compiled:
        assert c.binary.metadata.target == target, c.case
        assert f".target sm_{target.arch}" in c.binary.asm["ptx"], c.case
        assert c.binary.asm["cubin"][:4] == b"\x7fELF", c.case
    assert not _spilled(gpu.compiled), "\n".join(_spilled(gpu.compiled))
    # The layouts reach the specialisations they are there for; else a case silently repeats another.
    kinds = {arg: {_spec(c, arg) for c in gpu.compiled if c.kernel in (entropy_triton._forward_kernel,
                                                                       entropy_triton._backward_kernel)}
             for arg in ("x_ptr", "V", "stride_b", "rows_per_block")}
    assert {"*bf16", "*bf16 %16", "*fp16", "*fp32"} <= kinds["x_ptr"], kinds  # slice: x_ptr unaligned
    assert {"i32", "i32 %16"} <= kinds["V"], kinds
    assert {"i64"} <= kinds["stride_b"], kinds
    assert {"constexpr", "i32"} <= kinds["rows_per_block"], kinds


def test_spill_check_sees_the_spills_of_a_tile_one_warp_cannot_hold(stand_in_gpu, monkeypatch):
    gpu = stand_in_gpu(TARGETS[0])
    monkeypatch.setattr(entropy_triton, "_block", lambda V: (8192, 1))  # 256 fp32 per thread held for tl.max
    gpu.case = "oversized tile"
    entropy_triton.forward(_rows_view(_meta(1, 9000)), _meta(1, 1, dtype=torch.int64), 1.0)
    [c] = gpu.compiled
    assert c.spill_bytes > 0 and c.stack_bytes > 0 and c.registers > 128
    assert len(_spilled(gpu.compiled)) == 1


def test_launches_run_on_the_device_of_the_logits_not_the_current_device(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode  # CUDA tensors without a GPU

    current = [0]  # the simulated current CUDA device

    class device:  # stand-in for torch.cuda.device: selects a device for its with-block
        def __init__(self, d):
            self.idx = d if isinstance(d, int) else torch.device(d).index

        def __enter__(self):
            self.prev, current[0] = current[0], self.idx

        def __exit__(self, *exc):
            current[0] = self.prev

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    seen = []

    class Recorder:  # kernel[grid](...) notes the device Triton would launch on: the current one
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: seen.append((self.name, torch.cuda.current_device()))

    monkeypatch.setattr(entropy_triton, "_forward_kernel", Recorder("forward"))
    monkeypatch.setattr(entropy_triton, "_backward_kernel", Recorder("backward"))

    def forward_and_backward(device_name):
        x = torch.empty(2, 3, 123, device=device_name)
        ids, keep, stat = (torch.empty(2, 3, dtype=t, device=device_name) for t in (torch.int64, torch.bool,
                                                                                   torch.float32))
        entropy_triton.forward(x, ids, 1.0)
        entropy_triton.backward(x, ids, keep, stat, stat, stat, stat, stat, 1.0)

    with FakeTensorMode():
        forward_and_backward("cuda:1")
    assert seen == [("forward", 1), ("backward", 1)] and current == [0]
    seen.clear()
    forward_and_backward("cpu")  # TRITON_INTERPRET=1 on CPU tensors: no CUDA device is selected
    assert seen == [("forward", 0), ("backward", 0)]
