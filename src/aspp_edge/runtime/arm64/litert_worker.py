"""Runs a .tflite with the aarch64 ai-edge-litert under qemu (started by `runtime.arm64.run_tflite`).

It is run by the arm64 sysroot's python3.11 with only the aarch64 wheels on its path, so it imports
nothing from aspp_edge (whose dependencies are x86 builds).

    python3.11 litert_worker.py MODEL.tflite COUNT IN_PREFIX OUT_PREFIX MODE THREADS

MODE: `default` (the interpreter as shipped: builtin kernels + the default XNNPACK delegate),
`xnnpack-fp16` (no default delegate; an XNNPACK delegate with TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16,
created through libLiteRtRuntimeCApi.so's TfLiteXNNPackDelegateCreate), `builtin` (no delegate).
Reads IN_PREFIX<i>.npy, writes OUT_PREFIX<i>.npy, prints one JSON line: ops, delegate partitions,
the delegate flags used, hwcaps and the executable mappings of shared libraries.
"""

import ctypes
import json
import os
import sys

import numpy as np
from ai_edge_litert import interpreter as litert

FORCE_FP16 = 0x00000004  # TFLITE_XNNPACK_DELEGATE_FLAG_FORCE_FP16 (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h)


class _Options(ctypes.Structure):
    # TfLiteXNNPackDelegateOptions begins with num_threads and flags; the rest is left as the library's
    # defaults (room for it: the struct is returned by value into this buffer)
    _fields_ = [("num_threads", ctypes.c_int32), ("flags", ctypes.c_uint32), ("rest", ctypes.c_uint8 * 512)]


class _Delegate:
    """A TfLiteDelegate* from the C API, in the shape `Interpreter(experimental_delegates=...)` takes."""

    def __init__(self, threads: int, extra_flags: int) -> None:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(litert.__file__), "libLiteRtRuntimeCApi.so"))
        lib.TfLiteXNNPackDelegateOptionsDefault.restype = _Options
        lib.TfLiteXNNPackDelegateCreate.restype = ctypes.c_void_p
        lib.TfLiteXNNPackDelegateCreate.argtypes = [ctypes.POINTER(_Options)]
        lib.TfLiteXNNPackDelegateDelete.argtypes = [ctypes.c_void_p]
        self.options = lib.TfLiteXNNPackDelegateOptionsDefault()
        self.default_flags = int(self.options.flags)
        self.options.num_threads = threads
        self.options.flags |= extra_flags
        self.flags = int(self.options.flags)
        self._lib, self._ptr = lib, lib.TfLiteXNNPackDelegateCreate(ctypes.byref(self.options))
        if not self._ptr:
            raise RuntimeError("TfLiteXNNPackDelegateCreate returned NULL")

    def _get_native_delegate_pointer(self):
        return self._ptr


def _hwcaps():
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    libc.getauxval.argtypes = [ctypes.c_ulong]
    return [int(libc.getauxval(16)), int(libc.getauxval(26))]  # AT_HWCAP, AT_HWCAP2


def _maps():
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[1][2] == "x" and ".so" in parts[5]:
                out.append([parts[0], parts[5]])
    return out


def main(argv):
    model, count, in_prefix, out_prefix, mode, threads = argv[1], int(argv[2]), argv[3], argv[4], argv[5], int(argv[6])
    kwargs = {"model_path": model, "num_threads": threads}
    delegate = None
    if mode != "default":
        kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if mode == "xnnpack-fp16":
        delegate = _Delegate(threads, FORCE_FP16)
        kwargs["experimental_delegates"] = [delegate]
    interp = litert.Interpreter(**kwargs)
    interp.allocate_tensors()
    (inp,), (out,) = interp.get_input_details(), interp.get_output_details()
    for i in range(count):
        interp.set_tensor(inp["index"], np.load(f"{in_prefix}{i}.npy"))
        interp.invoke()
        np.save(f"{out_prefix}{i}.npy", interp.get_tensor(out["index"]))
    ops = interp._get_ops_details()  # noqa: SLF001 - the Interpreter's only per-op view
    # an op runs outside the delegate when its output feeds a partition without coming out of one
    # (the reading runtime.litert.xnnpack_delegation makes on x86)
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    into = {int(t) for op in delegates for t in op["inputs"]}
    out_of = {int(t) for op in delegates for t in op["outputs"]}
    outside = {}
    for op in ops:
        outputs = {int(t) for t in op["outputs"]}
        if op["op_name"] != "DELEGATE" and (not delegates or (outputs & into and not outputs & out_of)):
            outside[op["op_name"]] = outside.get(op["op_name"], 0) + 1
    print(json.dumps({
        "ran": count, "mode": mode, "ops": len(ops), "delegate_partitions": len(delegates), "ops_outside": outside,
        "delegate_flags": None if delegate is None else delegate.flags,
        "default_flags": None if delegate is None else delegate.default_flags,
        "hwcap": _hwcaps(), "maps": _maps()}))


if __name__ == "__main__":
    main(sys.argv)
