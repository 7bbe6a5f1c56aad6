"""FAKE pyACL: a stand-in for CANN's `acl` module, for tests on machines without an Ascend NPU.

This is NOT the Ascend runtime. It implements the slice of pyACL's API the station uses, with
pyACL's calling convention (creators return `(value, ret)`, the rest a bare `ret`, handles and
pointers as ints), and runs the model by mapping `acl.mdl.load_from_file("x.om")` to the
`x.onnx` beside it and executing that with ONNX Runtime. Device memory is real memory (ctypes
buffers), pointers are real addresses and copies are real `memmove`s, so a wrong size or a
wrong pointer gives wrong numbers here just as on the board.

Each behaviour and the documentation it follows (hiascend.com pages by their file names, CANN
5.0.4-8.5; Huawei's samples, Ascend/samples python/common/acllite):
- Call order (init -> set_device -> create_context -> create_stream; load, execute and unload in
  the model's context; teardown buffers/datasets -> unload -> desc -> free -> stream -> context ->
  reset_device -> finalize): acllite_resource.py / acllite_model.py, the pyACL "interface call
  flow" pages. Out-of-order calls are refused and kept in `violations`.
- acl.init: with `one_init_per_process=True` (CANN 5.x, the default: the strictest) a second
  acl.init in the process, even after acl.finalize, returns 100002 ACL_ERROR_REPEAT_INITIALIZE
  ("repeated initialisation or repeated load", aclError table aclpythondevg_01_0911). With False
  it behaves as the reference-counted runtime of CANN 8.5 (aclFinalizeReference, aclcppdevg_03_1974;
  CANN runtime unit tests UTEST_ACL_Common.duplicate_aclinit / finalize3): acl.init while
  initialised returns 100002 and still counts, acl.init after acl.finalize succeeds.
- acl.finalize without a live acl.init returns 100037 ACL_ERROR_REPEAT_FINALIZE (same tests).
- acl.rt.memcpy: the kind argument is not checked. aclrtMemcpy (aclcppdevg_03_0081 CANN 6.0.1,
  _0102 CANN 7.0, the 5.0.4 page _0068) calls it a reserved parameter: the runtime works the
  direction out from the two addresses and fails only when it cannot copy between them. The fake
  refuses a copy larger than dst_max and addresses it does not know; `memcpy_kinds` records the
  kinds passed, for tests that check the samples' convention.
- acl.create_data_buffer returns the aclDataBuffer's address as an int; aclCreateDataBuffer's
  NULL on failure is 0 in Python (never None). data=0 with size 0 is an empty buffer
  (create_data_buffer page aclpythondevg_01_0016, CANN 8.0.RC3).
- acl.util.bytes_to_ptr raises ValueError ("needs an byte as argument") for anything but bytes
  (CANN runtime source python/pyACL/util/bytes_convert.cpp); numpy_to_ptr needs a C-contiguous
  array.
- Return codes are CANN's names and meanings: 100000 INVALID_PARAM, 100001 UNINITIALIZE, 100002
  REPEAT_INITIALIZE, 100011 INVALID_MODEL_ID (aclError table), 107000 RT_PARAM_INVALID, 107002
  RT_CONTEXT_NULL (runtime codes of the same table), 145002 GE_EXEC_MODEL_PATH_INVALID (a path
  that is no file) and 145006 GE_EXEC_MODEL_DATA_SIZE_INVALID (an .om whose model data is empty),
  145000 GE_PARAM_INVALID for execute with datasets that do not fit the model
  (include/external/acl/error_codes/ge_error_codes.h). Where the documentation names no code
  (teardown with live resources, concurrent execute on one model) the fake returns 500000
  ACL_ERROR_INTERNAL_ERROR, the code unknown errors map to (aclError rule 5).

What the fake checks beyond that, as the real runtime would fail or corrupt memory: copies into
memory it did not allocate, dataset buffers whose sizes do not match the model's, execute outside
the model's context or concurrently on one model, device memory freed under a live data buffer,
a context destroyed with live resources, finalize with anything alive. `leaks()` lists every
resource still alive, for the tests to check after teardown.

It is stricter than CANN in one place: `set_device` does not make an implicit default context
current, so code must create (and in other threads set) its own context, as the samples do.

Use: `fake = FakeAcl(run_mode=ACL_DEVICE); monkeypatch.setitem(sys.modules, "acl", fake)`.
"""

import ctypes
import threading
import types
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

import numpy as np

ACL_DEVICE, ACL_HOST = 0, 1
ACL_MEMCPY_HOST_TO_HOST, ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST, ACL_MEMCPY_DEVICE_TO_DEVICE = 0, 1, 2, 3
ACL_FLOAT, ACL_FLOAT16 = 0, 1

# Return codes as CANN's acl_base.h / runtime names them.
ACL_SUCCESS = 0
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_MODEL_ID = 100011
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_GE_PARAM_INVALID = 145000
ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID = 145002
ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID = 145006
ACL_ERROR_INTERNAL_ERROR = 500000
# Host pointers handed out by bytes_to_ptr/numpy_to_ptr that the fake still recognises.
_HOST_POINTERS_KEPT = 256


@dataclass
class _Region:
    """A block of memory the fake knows: device memory it allocated, or a host buffer it was shown."""

    start: int
    size: int
    side: str  # "device" or "host"
    owner: Any  # keeps the memory alive
    context: Optional[int] = None
    allocated: bool = False  # from malloc/malloc_host (must be freed), not a borrowed host pointer

    def holds(self, ptr: int, length: int) -> bool:
        return self.start <= ptr and ptr + length <= self.start + self.size


@dataclass
class _Model:
    model_id: int
    om_path: str
    context: int
    session: Any
    input_names: List[str]
    input_shapes: List[Tuple[int, ...]]
    output_names: List[str]
    output_shapes: List[Tuple[int, ...]]
    running: bool = False


@dataclass
class _Dataset:
    buffers: List[int] = field(default_factory=list)


class FakeAcl(types.ModuleType):
    """A FAKE `acl` module (see the module docstring); inject it as `sys.modules['acl']`.

    `run_mode`: 0 ACL_DEVICE (the Atlas 200 DK) or 1 ACL_HOST (a PCIe card). `output_dtype`:
    "float32", or "float16" as an .om compiled with fp16 outputs gives them. `bytes_bridge`: False
    models an older pyACL without `acl.util.bytes_to_ptr` (only `numpy_to_ptr`).
    `one_init_per_process`: True as CANN 5.x (acl.init once per process), False as CANN 8.5 (counted).
    """

    def __init__(self, run_mode: int = ACL_DEVICE, output_dtype: str = "float32", bytes_bridge: bool = True,
                 one_init_per_process: bool = True) -> None:
        super().__init__("acl", __doc__)
        self.__file__ = __file__  # real pyACL is an extension module with a file (acl.so); this one is here
        self.run_mode = run_mode
        self.output_dtype = np.dtype(output_dtype)
        self.one_init_per_process = one_init_per_process
        self.violations: List[str] = []
        self.calls: List[str] = []
        self.memcpy_kinds: List[int] = []
        self._failures: Dict[str, int] = {}
        self._lock = threading.RLock()
        self._thread = threading.local()
        self._next_handle = 0x1000
        self._initialised = False
        self._ever_initialised = False
        self._devices: Dict[int, int] = {}  # device -> set_device calls not yet reset (CANN counts them)
        self._contexts: Dict[int, int] = {}  # context -> device
        self._streams: Dict[int, int] = {}  # stream -> context
        self._regions: Dict[int, _Region] = {}  # allocated memory by start address
        self._borrowed: Deque[_Region] = deque(maxlen=_HOST_POINTERS_KEPT)
        self._models: Dict[int, _Model] = {}
        self._next_model_id = 1
        self._descs: Dict[int, Optional[int]] = {}  # desc -> model id it describes
        self._datasets: Dict[int, _Dataset] = {}
        self._buffers: Dict[int, Tuple[int, int]] = {}  # data buffer -> (ptr, size)

        self.rt = types.SimpleNamespace(
            set_device=self._set_device, reset_device=self._reset_device,
            create_context=self._create_context, destroy_context=self._destroy_context,
            set_context=self._set_context, create_stream=self._create_stream, destroy_stream=self._destroy_stream,
            get_run_mode=self._get_run_mode, malloc=self._malloc, free=self._free,
            malloc_host=self._malloc_host, free_host=self._free_host, memcpy=self._memcpy,
        )
        self.mdl = types.SimpleNamespace(
            load_from_file=self._load_from_file, unload=self._unload, create_desc=self._create_desc,
            destroy_desc=self._destroy_desc, get_desc=self._get_desc, get_num_inputs=self._get_num_inputs,
            get_num_outputs=self._get_num_outputs, get_input_size_by_index=self._get_input_size_by_index,
            get_output_size_by_index=self._get_output_size_by_index, get_input_dims=self._get_input_dims,
            get_output_dims=self._get_output_dims, get_output_data_type=self._get_output_data_type,
            create_dataset=self._create_dataset, destroy_dataset=self._destroy_dataset,
            add_dataset_buffer=self._add_dataset_buffer, get_dataset_num_buffers=self._get_dataset_num_buffers,
            get_dataset_buffer=self._get_dataset_buffer, execute=self._execute,
        )
        util = {"numpy_to_ptr": self._numpy_to_ptr, "ptr_to_bytes": self._ptr_to_bytes}
        if bytes_bridge:
            util["bytes_to_ptr"] = self._bytes_to_ptr
        self.util = types.SimpleNamespace(**util)
        self.init = self._init
        self.finalize = self._finalize
        self.create_data_buffer = self._create_data_buffer
        self.destroy_data_buffer = self._destroy_data_buffer
        self.get_data_buffer_addr = self._get_data_buffer_addr
        self.get_data_buffer_size = self._get_data_buffer_size

    # ----- test controls -------------------------------------------------------------------
    def fail_next(self, call: str, code: int) -> None:
        """Make the next call of `call` (e.g. "acl.mdl.load_from_file") return `code` and do nothing."""
        self._failures[call] = code

    def leaks(self) -> List[str]:
        """Every resource still alive, one line each (empty after a complete teardown)."""
        with self._lock:
            found = [f"{r.side} memory {r.start:#x} ({r.size} bytes) not freed" for r in self._regions.values()]
            found += [f"data buffer {b:#x} not destroyed" for b in self._buffers]
            found += [f"dataset {d:#x} not destroyed" for d in self._datasets]
            found += [f"model id {m} ({self._models[m].om_path}) not unloaded" for m in self._models]
            found += [f"model desc {d:#x} not destroyed" for d in self._descs]
            found += [f"stream {s:#x} not destroyed" for s in self._streams]
            found += [f"context {c:#x} not destroyed" for c in self._contexts]
            found += [f"device {d} not reset ({n} set_device call(s) open)" for d, n in sorted(self._devices.items())]
            if self._initialised:
                found.append("acl.init without acl.finalize")
            return found

    # ----- bookkeeping ----------------------------------------------------------------------
    def _enter(self, call: str) -> int:
        """Log the call; the injected failure code for it, or 0."""
        self.calls.append(call)
        return self._failures.pop(call, 0)

    def _punish(self, code: int, message: str) -> int:
        self.violations.append(message)
        return code

    def _handle(self) -> int:
        self._next_handle += 0x10
        return self._next_handle

    @property
    def _current_context(self) -> Optional[int]:
        context = getattr(self._thread, "context", None)
        return context if context in self._contexts else None

    def _needs_context(self, call: str) -> int:
        """0 when acl is initialised and this thread has a current context, else the code to return."""
        if not self._initialised:
            return self._punish(ACL_ERROR_UNINITIALIZE, f"{call} before acl.init")
        if self._current_context is None:
            return self._punish(ACL_ERROR_RT_CONTEXT_NULL,
                                f"{call} in thread {threading.current_thread().name} with no current context")
        return 0

    def _region(self, ptr: int, length: int) -> Optional[_Region]:
        for region in list(self._regions.values()) + list(self._borrowed):
            if region.holds(ptr, length):
                return region
        return None

    def _live_buffers_on(self, region: _Region) -> List[int]:
        return [b for b, (ptr, size) in self._buffers.items() if region.holds(ptr, size)]

    # ----- acl / acl.rt ---------------------------------------------------------------------
    def _init(self, config_path: Optional[str] = None) -> int:
        code = self._enter("acl.init")
        if code:
            return code
        if self.one_init_per_process and self._ever_initialised:
            again = "while initialised" if self._initialised else "after acl.finalize"
            return self._punish(ACL_ERROR_REPEAT_INITIALIZE,
                                f"acl.init called again {again} (CANN 5.x: once per process)")
        if self._initialised:  # CANN 8.5 counts it (acl.finalize clears the count) and reports a repeat
            return ACL_ERROR_REPEAT_INITIALIZE
        self._initialised = self._ever_initialised = True
        return ACL_SUCCESS

    def _finalize(self) -> int:
        code = self._enter("acl.finalize")
        if code:
            return code
        if not self._initialised:
            return self._punish(ACL_ERROR_REPEAT_FINALIZE, "acl.finalize without acl.init")
        alive = [leak for leak in self.leaks() if leak != "acl.init without acl.finalize"]
        self._initialised = False
        if alive:
            return self._punish(ACL_ERROR_INTERNAL_ERROR, f"acl.finalize with live resources: {alive}")
        return ACL_SUCCESS

    def _set_device(self, device_id: int) -> int:
        code = self._enter("acl.rt.set_device")
        if code:
            return code
        if not self._initialised:
            return self._punish(ACL_ERROR_UNINITIALIZE, "acl.rt.set_device before acl.init")
        if device_id != 0:
            return ACL_ERROR_INVALID_PARAM  # the fake has one NPU, device 0
        self._devices[device_id] = self._devices.get(device_id, 0) + 1
        return ACL_SUCCESS

    def _reset_device(self, device_id: int) -> int:
        code = self._enter("acl.rt.reset_device")
        if code:
            return code
        if device_id not in self._devices:
            return self._punish(ACL_ERROR_INVALID_PARAM, f"acl.rt.reset_device({device_id}) of a device not set")
        self._devices[device_id] -= 1
        if self._devices[device_id]:
            return ACL_SUCCESS  # other users of the device remain
        del self._devices[device_id]
        contexts = [c for c, d in self._contexts.items() if d == device_id]
        if contexts:
            return self._punish(ACL_ERROR_INTERNAL_ERROR, f"acl.rt.reset_device with live contexts {contexts}")
        return ACL_SUCCESS

    def _create_context(self, device_id: int) -> Tuple[Optional[int], int]:
        code = self._enter("acl.rt.create_context")
        if code:
            return None, code
        if not self._initialised:
            return None, self._punish(ACL_ERROR_UNINITIALIZE, "acl.rt.create_context before acl.init")
        if device_id not in self._devices:
            return None, self._punish(ACL_ERROR_INVALID_PARAM,
                                      f"acl.rt.create_context({device_id}) before acl.rt.set_device({device_id})")
        context = self._handle()
        self._contexts[context] = device_id
        self._thread.context = context
        return context, ACL_SUCCESS

    def _set_context(self, context: int) -> int:
        code = self._enter("acl.rt.set_context")
        if code:
            return code
        if context not in self._contexts:
            return self._punish(ACL_ERROR_RT_PARAM_INVALID, f"acl.rt.set_context of unknown context {context!r}")
        self._thread.context = context
        return ACL_SUCCESS

    def _destroy_context(self, context: int) -> int:
        code = self._enter("acl.rt.destroy_context")
        if code:
            return code
        if context not in self._contexts:
            return self._punish(ACL_ERROR_RT_PARAM_INVALID, f"acl.rt.destroy_context of unknown context {context!r}")
        alive = [f"stream {s:#x}" for s, c in self._streams.items() if c == context]
        alive += [f"model {m.model_id}" for m in self._models.values() if m.context == context]
        alive += [f"memory {r.start:#x}" for r in self._regions.values() if r.context == context]
        del self._contexts[context]
        if getattr(self._thread, "context", None) == context:
            self._thread.context = None
        if alive:
            return self._punish(ACL_ERROR_INTERNAL_ERROR, f"acl.rt.destroy_context with live resources: {alive}")
        return ACL_SUCCESS

    def _create_stream(self) -> Tuple[Optional[int], int]:
        code = self._enter("acl.rt.create_stream") or self._needs_context("acl.rt.create_stream")
        if code:
            return None, code
        stream = self._handle()
        self._streams[stream] = self._current_context
        return stream, ACL_SUCCESS

    def _destroy_stream(self, stream: int) -> int:
        code = self._enter("acl.rt.destroy_stream") or self._needs_context("acl.rt.destroy_stream")
        if code:
            return code
        if self._streams.pop(stream, None) is None:
            return self._punish(ACL_ERROR_RT_PARAM_INVALID, f"acl.rt.destroy_stream of unknown stream {stream!r}")
        return ACL_SUCCESS

    def _get_run_mode(self) -> Tuple[Optional[int], int]:
        code = self._enter("acl.rt.get_run_mode")
        if code:
            return None, code
        if not self._initialised:
            return None, self._punish(ACL_ERROR_UNINITIALIZE, "acl.rt.get_run_mode before acl.init")
        return self.run_mode, ACL_SUCCESS

    def _allocate(self, call: str, size: int, side: str) -> Tuple[Optional[int], int]:
        code = self._enter(call) or self._needs_context(call)
        if code:
            return None, code
        if size <= 0:
            return None, self._punish(ACL_ERROR_INVALID_PARAM, f"{call}({size}): size must be > 0")
        memory = ctypes.create_string_buffer(size)
        start = ctypes.addressof(memory)
        self._regions[start] = _Region(start, size, side, memory, self._current_context, allocated=True)
        return start, ACL_SUCCESS

    def _malloc(self, size: int, policy: int) -> Tuple[Optional[int], int]:
        if policy not in (0, 1, 2):
            self._enter("acl.rt.malloc")
            return None, self._punish(ACL_ERROR_INVALID_PARAM, f"acl.rt.malloc policy {policy} unknown")
        return self._allocate("acl.rt.malloc", size, "device")

    def _malloc_host(self, size: int) -> Tuple[Optional[int], int]:
        return self._allocate("acl.rt.malloc_host", size, "host")

    def _release(self, call: str, ptr: int, side: str) -> int:
        code = self._enter(call) or self._needs_context(call)
        if code:
            return code
        region = self._regions.get(ptr)
        if region is None or region.side != side:
            return self._punish(ACL_ERROR_RT_PARAM_INVALID, f"{call} of {ptr!r}: not {side} memory from the fake")
        users = self._live_buffers_on(region)
        del self._regions[ptr]
        if users:
            return self._punish(ACL_ERROR_INTERNAL_ERROR,
                                f"{call} of {ptr:#x} while data buffers {users} still point into it")
        return ACL_SUCCESS

    def _free(self, ptr: int) -> int:
        return self._release("acl.rt.free", ptr, "device")

    def _free_host(self, ptr: int) -> int:
        return self._release("acl.rt.free_host", ptr, "host")

    def _memcpy(self, dst: int, dst_max: int, src: int, count: int, kind: int) -> int:
        code = self._enter("acl.rt.memcpy") or self._needs_context("acl.rt.memcpy")
        if code:
            return code
        self.memcpy_kinds.append(kind)  # reserved parameter: recorded, not checked (module docstring)
        if count > dst_max:
            return self._punish(ACL_ERROR_INVALID_PARAM, f"acl.rt.memcpy count {count} > dst_max {dst_max}")
        target, source = self._region(dst, dst_max), self._region(src, count)
        if target is None:
            return self._punish(ACL_ERROR_RT_PARAM_INVALID,
                                f"acl.rt.memcpy destination {dst:#x}+{dst_max} is not memory the fake knows")
        if source is None:
            return self._punish(ACL_ERROR_RT_PARAM_INVALID,
                                f"acl.rt.memcpy source {src:#x}+{count} is not memory the fake knows")
        ctypes.memmove(dst, src, count)
        return ACL_SUCCESS

    # ----- acl.util -------------------------------------------------------------------------
    def _bytes_to_ptr(self, data: bytes) -> int:
        if not isinstance(data, bytes):
            raise ValueError("needs an byte as argument")  # pyACL's own message (bytes_convert.cpp)
        ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
        self._borrowed.append(_Region(ptr, len(data), "host", data))
        return ptr

    def _numpy_to_ptr(self, array: np.ndarray) -> int:
        if not array.flags["C_CONTIGUOUS"]:
            raise ValueError("acl.util.numpy_to_ptr needs a C-contiguous array")
        ptr = array.ctypes.data
        self._borrowed.append(_Region(ptr, array.nbytes, "host", array))
        return ptr

    def _ptr_to_bytes(self, ptr: int, size: int) -> bytes:
        return ctypes.string_at(ptr, size)

    # ----- data buffers and datasets ----------------------------------------------------------
    def _create_data_buffer(self, ptr: int, size: int) -> int:
        self._enter("acl.create_data_buffer")
        if ptr == 0 and size != 0:
            self._punish(ACL_ERROR_INVALID_PARAM, f"acl.create_data_buffer(0, {size}): an empty buffer needs size 0")
            return 0
        region = self._regions.get(ptr)
        if ptr != 0 and (region is None or not region.holds(ptr, size)):
            self._punish(ACL_ERROR_INVALID_PARAM, f"acl.create_data_buffer({ptr!r}, {size}) outside allocated memory")
            return 0
        buffer = self._handle()
        self._buffers[buffer] = (ptr, size)
        return buffer

    def _destroy(self, call: str, table: Dict[int, Any], handle: int) -> int:
        """Destroy a plain handle (data buffer, dataset, desc): unknown or already destroyed is punished."""
        code = self._enter(call)
        if code:
            return code
        if handle not in table:
            return self._punish(ACL_ERROR_INVALID_PARAM, f"{call} of unknown or destroyed handle {handle!r}")
        del table[handle]
        return ACL_SUCCESS

    def _destroy_data_buffer(self, buffer: int) -> int:
        return self._destroy("acl.destroy_data_buffer", self._buffers, buffer)

    def _get_data_buffer_addr(self, buffer: int) -> int:
        return self._buffers[buffer][0]

    def _get_data_buffer_size(self, buffer: int) -> int:
        return self._buffers[buffer][1]

    def _create_dataset(self) -> int:
        self._enter("acl.mdl.create_dataset")
        dataset = self._handle()
        self._datasets[dataset] = _Dataset()
        return dataset

    def _destroy_dataset(self, dataset: int) -> int:
        return self._destroy("acl.mdl.destroy_dataset", self._datasets, dataset)

    def _add_dataset_buffer(self, dataset: int, buffer: int) -> Tuple[int, int]:
        code = self._enter("acl.mdl.add_dataset_buffer")
        if code:
            return dataset, code
        if dataset not in self._datasets or buffer not in self._buffers:
            return dataset, self._punish(ACL_ERROR_INVALID_PARAM,
                                         f"acl.mdl.add_dataset_buffer({dataset!r}, {buffer!r}): unknown handle")
        self._datasets[dataset].buffers.append(buffer)
        return dataset, ACL_SUCCESS

    def _get_dataset_num_buffers(self, dataset: int) -> int:
        return len(self._datasets[dataset].buffers)

    def _get_dataset_buffer(self, dataset: int, index: int) -> int:
        return self._datasets[dataset].buffers[index]

    # ----- models ---------------------------------------------------------------------------
    def _load_from_file(self, path: str) -> Tuple[Optional[int], int]:
        code = self._enter("acl.mdl.load_from_file") or self._needs_context("acl.mdl.load_from_file")
        if code:
            return None, code
        om_path = Path(path)
        onnx_path = om_path.with_suffix(".onnx")
        if not om_path.is_file():
            return None, ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID
        if om_path.stat().st_size == 0 or not onnx_path.is_file():
            return None, ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(onnx_path), sess_options=options,
                                               providers=["CPUExecutionProvider"])
        model = _Model(
            model_id=self._next_model_id, om_path=str(om_path), context=self._current_context, session=session,
            input_names=[i.name for i in session.get_inputs()],
            input_shapes=[tuple(i.shape) for i in session.get_inputs()],
            output_names=[o.name for o in session.get_outputs()],
            output_shapes=[tuple(o.shape) for o in session.get_outputs()],
        )
        self._next_model_id += 1
        self._models[model.model_id] = model
        return model.model_id, ACL_SUCCESS

    def _unload(self, model_id: int) -> int:
        code = self._enter("acl.mdl.unload") or self._needs_context("acl.mdl.unload")
        if code:
            return code
        model = self._models.get(model_id)
        if model is None:
            return self._punish(ACL_ERROR_INVALID_MODEL_ID, f"acl.mdl.unload of unknown model id {model_id!r}")
        if model.context != self._current_context:
            return self._punish(ACL_ERROR_RT_CONTEXT_NULL, f"acl.mdl.unload of model {model_id} outside its context")
        del self._models[model_id]
        return ACL_SUCCESS

    def _create_desc(self) -> int:
        self._enter("acl.mdl.create_desc")
        desc = self._handle()
        self._descs[desc] = None
        return desc

    def _destroy_desc(self, desc: int) -> int:
        return self._destroy("acl.mdl.destroy_desc", self._descs, desc)

    def _get_desc(self, desc: int, model_id: int) -> int:
        code = self._enter("acl.mdl.get_desc")
        if code:
            return code
        if desc not in self._descs:
            return self._punish(ACL_ERROR_INVALID_PARAM, f"acl.mdl.get_desc with unknown desc {desc!r}")
        if model_id not in self._models:
            return self._punish(ACL_ERROR_INVALID_MODEL_ID, f"acl.mdl.get_desc of unknown model id {model_id!r}")
        self._descs[desc] = model_id
        return ACL_SUCCESS

    def _described(self, desc: int) -> _Model:
        model_id = self._descs.get(desc)
        if model_id not in self._models:
            self.violations.append(f"model description {desc!r} read before acl.mdl.get_desc filled it")
            raise ValueError(f"FAKE acl: desc {desc!r} describes no loaded model")
        return self._models[model_id]

    def _get_num_inputs(self, desc: int) -> int:
        return len(self._described(desc).input_names)

    def _get_num_outputs(self, desc: int) -> int:
        return len(self._described(desc).output_names)

    def _get_input_size_by_index(self, desc: int, index: int) -> int:
        return int(np.prod(self._described(desc).input_shapes[index])) * 4

    def _get_output_size_by_index(self, desc: int, index: int) -> int:
        return int(np.prod(self._described(desc).output_shapes[index])) * self.output_dtype.itemsize

    def _dims(self, name: str, shape: Tuple[int, ...]) -> Tuple[Dict[str, Any], int]:
        return {"name": name, "dimCount": len(shape), "dims": list(shape)}, ACL_SUCCESS

    def _get_input_dims(self, desc: int, index: int) -> Tuple[Dict[str, Any], int]:
        model = self._described(desc)
        return self._dims(model.input_names[index], model.input_shapes[index])

    def _get_output_dims(self, desc: int, index: int) -> Tuple[Dict[str, Any], int]:
        model = self._described(desc)
        return self._dims(model.output_names[index], model.output_shapes[index])

    def _get_output_data_type(self, desc: int, index: int) -> int:
        self._described(desc)
        return ACL_FLOAT16 if self.output_dtype == np.float16 else ACL_FLOAT

    def _dataset_problem(self, dataset: int, what: str, sizes: List[int], exact: bool) -> Optional[str]:
        """Why `dataset` cannot serve as the model's inputs/outputs of `sizes` bytes, or None."""
        if dataset not in self._datasets:
            return f"acl.mdl.execute with unknown {what} dataset {dataset!r}"
        buffers = self._datasets[dataset].buffers
        if len(buffers) != len(sizes):
            return f"acl.mdl.execute: {what} dataset has {len(buffers)} buffers, the model has {len(sizes)} {what}s"
        for index, (buffer, needed) in enumerate(zip(buffers, sizes)):
            if buffer not in self._buffers:
                return f"acl.mdl.execute: {what} {index} data buffer was destroyed"
            ptr, size = self._buffers[buffer]
            if (size != needed) if exact else (size < needed):
                return f"acl.mdl.execute: {what} {index} buffer holds {size} bytes, the model's {what} needs {needed}"
            region = self._regions.get(ptr)
            if region is None or region.side != "device" or not region.holds(ptr, size):
                return f"acl.mdl.execute: {what} {index} buffer is not live device memory from acl.rt.malloc"
        return None

    def _execute(self, model_id: int, inputs: int, outputs: int) -> int:
        with self._lock:
            code = self._enter("acl.mdl.execute") or self._needs_context("acl.mdl.execute")
            if code:
                return code
            model = self._models.get(model_id)
            if model is None:
                return self._punish(ACL_ERROR_INVALID_MODEL_ID, f"acl.mdl.execute of unknown model id {model_id!r}")
            if model.context != self._current_context:
                return self._punish(ACL_ERROR_RT_CONTEXT_NULL,
                                    f"acl.mdl.execute of model {model_id} outside the context it was loaded in")
            in_sizes = [int(np.prod(s)) * 4 for s in model.input_shapes]
            out_sizes = [int(np.prod(s)) * self.output_dtype.itemsize for s in model.output_shapes]
            problem = (self._dataset_problem(inputs, "input", in_sizes, exact=True)
                       or self._dataset_problem(outputs, "output", out_sizes, exact=False))
            if problem:
                return self._punish(ACL_ERROR_GE_PARAM_INVALID, problem)
            if model.running:
                return self._punish(ACL_ERROR_INTERNAL_ERROR,
                                    f"acl.mdl.execute on model {model_id} while another execute on it runs")
            model.running = True
            feeds = {}
            for name, shape, buffer in zip(model.input_names, model.input_shapes, self._datasets[inputs].buffers):
                ptr, size = self._buffers[buffer]
                feeds[name] = np.frombuffer(ctypes.string_at(ptr, size), np.float32).reshape(shape)
        try:
            results = model.session.run(model.output_names, feeds)
        finally:
            model.running = False
        with self._lock:
            for value, buffer in zip(results, self._datasets[outputs].buffers):
                data = np.ascontiguousarray(value, dtype=self.output_dtype).tobytes()
                ctypes.memmove(self._buffers[buffer][0], data, len(data))
        return ACL_SUCCESS
