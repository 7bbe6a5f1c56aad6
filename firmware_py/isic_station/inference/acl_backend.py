"""The NPU backend: the manifest's ATC-compiled .om graphs on the Ascend 310 through pyACL.

Follows the calling convention and the bring-up/teardown order of Huawei's pyACL samples
(acllite_resource.py / acllite_model.py; summarised in docs/notes/ascend.md):
acl.init -> set_device -> create_context -> create_stream -> get_run_mode, then per graph
load_from_file -> create_desc/get_desc -> device buffers and datasets, allocated once and reused
for every measurement. Teardown runs the reverse order and is also run when loading fails half way;
acl.init runs once per process and acl.finalize once at its exit (`_ProcessInit`).

pyACL reports failures as integer return codes, never exceptions; every non-zero code becomes an
AclError naming the call and the code. `acl` is imported in `load()` only: it exists only on a
CANN installation, and the station must import everywhere else.
"""

import atexit
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from isic_common.errors import BackendUnavailable, ModelError
from isic_station.inference.base import Backend, whole_number_option
from isic_station.manifest import GraphSpec, Manifest

log = logging.getLogger(__name__)

# pyACL exposes its enums as plain integers; these are the values of the CANN headers (acl_rt.h,
# acl_base.h), as the Ascend samples spell them out.
ACL_DEVICE, ACL_HOST = 0, 1
ACL_MEM_MALLOC_NORMAL_ONLY = 2
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_FLOAT, ACL_FLOAT16 = 0, 1
OUTPUT_DTYPES = {ACL_FLOAT: np.dtype(np.float32), ACL_FLOAT16: np.dtype(np.float16)}

# What the codes seen most often mean, appended to the error message. Names and meanings from the
# pyACL aclError table (e.g. CANN 8.0.RC3 aclpythondevg_01_0911, hiascend.com) and CANN's
# include/external/acl/error_codes/ge_error_codes.h (145xxx, the graph engine's codes).
ACL_ERROR_HINTS = {
    100000: "invalid parameter",
    100001: "pyACL not initialised",
    100002: "repeated initialisation or repeated load",
    100003: "invalid file: the .om is missing or unreadable",
    107002: "no pyACL context current in this thread",
    145000: "graph engine: invalid parameter",
    145002: "graph engine: invalid model path",
    # ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID: the model data read from the .om has an invalid size.
    145006: "invalid model data size: the .om is damaged or truncated; copy or compile it again",
    500002: "graph engine failure (the .om does not suit this CANN/NPU)",
}


class AclError(BackendUnavailable):
    """A pyACL call returned a non-zero code: `call` is the pyACL function, `code` the ACL error."""

    def __init__(self, call: str, code: int) -> None:
        self.call = call
        self.code = code
        hint = ACL_ERROR_HINTS.get(code)
        super().__init__(f"pyACL {call} failed with ACL error {code}" + (f" ({hint})" if hint else ""))


def check_ret(call: str, ret: int) -> None:
    """Raise AclError unless pyACL's return code `ret` is 0 (success)."""
    if ret != 0:
        raise AclError(call, ret)


def _record(call: str, ret: int, failures: List[AclError]) -> None:
    """Note a failed teardown step; teardown goes on with the next one."""
    if ret != 0:
        failures.append(AclError(call, ret))


def import_acl() -> Any:
    """The `acl` module, or BackendUnavailable saying how to get it."""
    try:
        import acl
    except (ImportError, OSError) as exc:  # OSError: the module is there, its CANN libraries are not
        raise BackendUnavailable(
            f"pyACL (the 'acl' module of CANN) cannot be imported ({exc}): on an Atlas board source "
            "CANN's set_env.sh before starting the station; elsewhere use inference backend "
            "'onnxruntime' or 'auto'"
        ) from None
    return acl


def acl_importable() -> bool:
    """True when `import acl` works here (the `auto` backend's first test)."""
    try:
        import_acl()
    except BackendUnavailable:
        return False
    return True


class _ProcessInit:
    """acl.init once per process, acl.finalize once at its exit, shared by every AclBackend.

    CANN 5.x allows a single acl.init per process: a second one, even after acl.finalize, fails
    with 100002 (ACL_ERROR_REPEAT_INITIALIZE, "repeated initialisation"). CANN 8.5 counts acl.init
    calls (acl.finalize_reference decrements, acl.finalize clears the count; pyACL page
    aclpythondevg_01_1134). Both are served by initialising on the first load and finalising only
    when the process exits: a model reload, or doctor running several checks, never re-initialises.
    The pyACL acl.finalize page (aclpythondevg_01_0005) asks for an explicit finalize before the
    process exits and not from a destructor: hence an atexit handler, not __del__.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: Any = None
        self._initialised = False
        self._finalised = False
        self._atexit_registered = False

    def acquire(self, acl: Any) -> None:
        with self._lock:
            if self._module is not acl:
                # A different `acl` module object has nothing initialised (tests install a new fake each).
                self._module, self._initialised, self._finalised = acl, False, False
            if self._initialised:
                return
            if self._finalised:
                raise BackendUnavailable("pyACL was already finalised in this process and CANN allows one "
                                         "acl.init per process: restart the station to use the NPU again")
            check_ret("acl.init", acl.init())
            self._initialised = True
            if not self._atexit_registered:
                atexit.register(finalize_pyacl)
                self._atexit_registered = True

    def finalize(self) -> None:
        """acl.finalize if pyACL was initialised; a failure is logged (the process is ending)."""
        with self._lock:
            if self._module is None or not self._initialised:
                return
            self._initialised, self._finalised = False, True
            ret = self._module.finalize()
        if ret != 0:
            log.warning("%s", AclError("acl.finalize", ret))


_PROCESS_INIT = _ProcessInit()


def finalize_pyacl() -> None:
    """Finalise pyACL for this process (run at exit; call it directly only when the NPU is done for good)."""
    _PROCESS_INIT.finalize()


def _host_input(acl: Any, array: np.ndarray, bytes_bridge: bool) -> Tuple[Any, int]:
    """A host pointer to `array`'s bytes and the object that must stay alive while it is used."""
    if bytes_bridge:
        data = array.tobytes()
        return data, acl.util.bytes_to_ptr(data)
    return array, acl.util.numpy_to_ptr(array)


def _host_output(acl: Any, size: int, bytes_bridge: bool) -> Tuple[Any, int]:
    """A zeroed host buffer of `size` bytes for an output copy, and a pointer to it."""
    if bytes_bridge:
        data = bytes(size)
        return data, acl.util.bytes_to_ptr(data)
    array = np.zeros(size, np.uint8)
    return array, acl.util.numpy_to_ptr(array)


@dataclass
class _Tensor:
    """One model input or output: its device buffer and how to read it back."""

    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    size: int
    ptr: int


@dataclass
class _AclModel:
    """One loaded .om with its device buffers and datasets (built once, reused for every run)."""

    graph: GraphSpec
    model_id: Optional[int] = None
    desc: Any = None
    inputs: List[_Tensor] = field(default_factory=list)
    outputs: List[_Tensor] = field(default_factory=list)
    input_dataset: Any = None
    output_dataset: Any = None
    data_buffers: List[Any] = field(default_factory=list)
    device_ptrs: List[int] = field(default_factory=list)

    def load(self, acl: Any) -> None:
        """Load the .om, read its description, allocate and wire every input and output buffer."""
        path = str(self.graph.om_path)
        model_id, ret = acl.mdl.load_from_file(path)
        check_ret("acl.mdl.load_from_file", ret)
        self.model_id = model_id
        self.desc = acl.mdl.create_desc()
        check_ret("acl.mdl.get_desc", acl.mdl.get_desc(self.desc, self.model_id))
        self._check_count("inputs", acl.mdl.get_num_inputs(self.desc), len(self.graph.inputs))
        self._check_count("outputs", acl.mdl.get_num_outputs(self.desc), len(self.graph.outputs))
        self.input_dataset = acl.mdl.create_dataset()
        for index, spec in enumerate(self.graph.inputs):
            size = acl.mdl.get_input_size_by_index(self.desc, index)
            self._check_size("input", spec.name, spec.shape, np.dtype(np.float32), size)
            self.inputs.append(self._wire(acl, self.input_dataset, spec.name, spec.shape, np.dtype(np.float32), size))
        self.output_dataset = acl.mdl.create_dataset()
        for index, spec in enumerate(self.graph.outputs):
            code = acl.mdl.get_output_data_type(self.desc, index)
            if code not in OUTPUT_DTYPES:
                raise ModelError(f"{path} output {index} ('{spec.name}') has ACL data type {code}; "
                                 "the station reads float32 (0) or float16 (1) outputs")
            size = acl.mdl.get_output_size_by_index(self.desc, index)
            self._check_size("output", spec.name, spec.shape, OUTPUT_DTYPES[code], size)
            self.outputs.append(self._wire(acl, self.output_dataset, spec.name, spec.shape, OUTPUT_DTYPES[code], size))

    def _check_count(self, what: str, actual: int, declared: int) -> None:
        if actual != declared:
            raise ModelError(f"{self.graph.om_path} has {actual} {what}, the manifest declares {declared} "
                             f"for graph '{self.graph.key}': the .om was compiled from another model")

    def _check_size(self, what: str, name: str, shape: Tuple[int, ...], dtype: np.dtype, size: int) -> None:
        expected = int(np.prod(shape)) * dtype.itemsize
        if size != expected:
            raise ModelError(
                f"{self.graph.om_path} {what} '{name}' holds {size} bytes, but the manifest's shape {list(shape)} "
                f"as {dtype.name} needs {expected}: recompile the .om with ATC for these shapes"
            )

    def _wire(self, acl: Any, dataset: Any, name: str, shape: Tuple[int, ...], dtype: np.dtype, size: int) -> _Tensor:
        """Allocate one device buffer and add it to `dataset` (every handle recorded for teardown)."""
        ptr, ret = acl.rt.malloc(size, ACL_MEM_MALLOC_NORMAL_ONLY)
        check_ret("acl.rt.malloc", ret)
        self.device_ptrs.append(ptr)
        buffer = acl.create_data_buffer(ptr, size)
        # pyACL returns the aclDataBuffer's address as an int; aclCreateDataBuffer's NULL on failure
        # arrives as 0 (pyACL page "create_data_buffer", aclpythondevg_01_0015/0016).
        if not buffer:
            raise BackendUnavailable(f"pyACL acl.create_data_buffer gave no buffer for {size} bytes at {ptr:#x}")
        self.data_buffers.append(buffer)
        _, ret = acl.mdl.add_dataset_buffer(dataset, buffer)
        check_ret("acl.mdl.add_dataset_buffer", ret)
        return _Tensor(name, shape, dtype, size, ptr)

    def execute(self, acl: Any, arrays: List[np.ndarray], copy_in: int, copy_out: int,
                bytes_bridge: bool) -> Dict[str, np.ndarray]:
        """Copy `arrays` into the input buffers, execute, copy the outputs back as float32."""
        for tensor, array in zip(self.inputs, arrays):
            # `held` owns the bytes `src` points at; it lives until the (synchronous) copy returns
            # (bytes_to_ptr page, aclpythondevg_01_0055: the input must outlive the pointer).
            held, src = _host_input(acl, array, bytes_bridge)
            check_ret("acl.rt.memcpy", acl.rt.memcpy(tensor.ptr, tensor.size, src, array.nbytes, copy_in))
        check_ret("acl.mdl.execute", acl.mdl.execute(self.model_id, self.input_dataset, self.output_dataset))
        results = {}
        for tensor in self.outputs:
            host, dst = _host_output(acl, tensor.size, bytes_bridge)
            check_ret("acl.rt.memcpy", acl.rt.memcpy(dst, tensor.size, tensor.ptr, tensor.size, copy_out))
            results[tensor.name] = np.frombuffer(host, dtype=tensor.dtype).reshape(tensor.shape).astype(np.float32)
        return results

    def release(self, acl: Any, failures: List[AclError]) -> None:
        """Teardown in the documented order: data buffers and datasets, unload, desc, device memory."""
        for buffer in self.data_buffers:
            _record("acl.destroy_data_buffer", acl.destroy_data_buffer(buffer), failures)
        for dataset in (self.input_dataset, self.output_dataset):
            if dataset is not None:
                _record("acl.mdl.destroy_dataset", acl.mdl.destroy_dataset(dataset), failures)
        if self.model_id is not None:
            _record("acl.mdl.unload", acl.mdl.unload(self.model_id), failures)
        if self.desc is not None:
            _record("acl.mdl.destroy_desc", acl.mdl.destroy_desc(self.desc), failures)
        for ptr in self.device_ptrs:
            _record("acl.rt.free", acl.rt.free(ptr), failures)
        self.model_id = self.desc = self.input_dataset = self.output_dataset = None
        self.inputs, self.outputs, self.data_buffers, self.device_ptrs = [], [], [], []


class AclBackend(Backend):
    """Every graph of the manifest as an .om on one NPU device, in one context.

    Options: `device_id` (default 0). Copies follow the run mode as the samples do: on the board
    itself (ACL_DEVICE) the program's memory is device memory, so inputs and outputs are copied
    device-to-device; with a PCIe card in a host (ACL_HOST) host-to-device and device-to-host.
    One lock serialises copy-in, execute and copy-out, because the buffers are shared and pyACL
    wants execute calls on one model serialised; each run makes the context current in the
    calling thread, so any thread may call `run`.
    """

    kind = "acl"

    def __init__(self, manifest: Manifest, options: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(manifest, options)
        self.device_id = whole_number_option(self.options, "device_id", 0, minimum=0)
        self.run_mode: Optional[int] = None
        self._acl: Any = None
        self._device_set = False
        self._context: Any = None
        self._stream: Any = None
        self._copy_in = self._copy_out = ACL_MEMCPY_DEVICE_TO_DEVICE
        self._bytes_bridge = True
        self._models: Dict[str, _AclModel] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        if self._acl is not None:
            raise RuntimeError("pyACL backend is already loaded (close() it first)")
        acl = import_acl()
        for graph in self.manifest.graphs.values():
            if graph.om_path is None or not graph.om_path.is_file():
                raise ModelError(
                    f"graph '{graph.key}' has no compiled .om ({graph.om_path or 'none named in the manifest'}): "
                    "compile it with ATC (`isic-model build-om --record`) or use inference backend 'onnxruntime'"
                )
        with self._lock:
            self._acl = acl
            try:
                self._bring_up()
                for key, graph in self.manifest.graphs.items():
                    self._models[key] = model = _AclModel(graph)
                    model.load(acl)
            except BaseException:
                for failure in self._teardown():
                    log.warning("while releasing pyACL after a failed load: %s", failure)
                raise
        log.info("pyACL: device %d, run mode %s, loaded graphs %s", self.device_id,
                 "ACL_HOST" if self.run_mode == ACL_HOST else "ACL_DEVICE", sorted(self._models))

    def _bring_up(self) -> None:
        acl = self._acl
        _PROCESS_INIT.acquire(acl)
        check_ret("acl.rt.set_device", acl.rt.set_device(self.device_id))
        self._device_set = True
        context, ret = acl.rt.create_context(self.device_id)
        check_ret("acl.rt.create_context", ret)
        self._context = context
        stream, ret = acl.rt.create_stream()
        check_ret("acl.rt.create_stream", ret)
        self._stream = stream
        run_mode, ret = acl.rt.get_run_mode()
        check_ret("acl.rt.get_run_mode", ret)
        if run_mode not in (ACL_DEVICE, ACL_HOST):
            raise BackendUnavailable(f"pyACL reports run mode {run_mode}; expected 0 (ACL_DEVICE) or 1 (ACL_HOST)")
        self.run_mode = run_mode
        # aclrtMemcpy's kind is a reserved parameter in CANN 5.0.4/6.0.1/7.0: the runtime works the
        # direction out from the two addresses (aclcppdevg_03_0081 / _0102). The kinds the samples
        # pass for each run mode are passed anyway, for CANN releases that read them.
        if run_mode == ACL_HOST:
            self._copy_in, self._copy_out = ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_HOST
        else:
            self._copy_in = self._copy_out = ACL_MEMCPY_DEVICE_TO_DEVICE
        # Newer CANN deprecates numpy_to_ptr; the samples prefer bytes_to_ptr where it exists.
        self._bytes_bridge = "bytes_to_ptr" in dir(acl.util)

    def run(self, graph_key: str, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = self.ordered_inputs(graph_key, inputs)
        with self._lock:
            model = self._models.get(graph_key)
            if model is None or self._acl is None:
                raise RuntimeError(f"pyACL backend: graph '{graph_key}' is not loaded (call load() first)")
            check_ret("acl.rt.set_context", self._acl.rt.set_context(self._context))
            return model.execute(self._acl, arrays, self._copy_in, self._copy_out, self._bytes_bridge)

    def _teardown(self) -> List[AclError]:
        """Release everything that was brought up, in the documented order; returns the failures."""
        acl = self._acl
        failures: List[AclError] = []
        if acl is None:
            return failures
        if self._context is not None:
            # close() may come from another thread than load(): make our context current first.
            _record("acl.rt.set_context", acl.rt.set_context(self._context), failures)
        for model in self._models.values():
            model.release(acl, failures)
        self._models.clear()
        if self._stream is not None:
            _record("acl.rt.destroy_stream", acl.rt.destroy_stream(self._stream), failures)
        if self._context is not None:
            _record("acl.rt.destroy_context", acl.rt.destroy_context(self._context), failures)
        if self._device_set:
            _record("acl.rt.reset_device", acl.rt.reset_device(self.device_id), failures)
        # acl.finalize is not called here: pyACL stays initialised until the process exits (_ProcessInit).
        self._acl, self._stream, self._context = None, None, None
        self._device_set = False
        return failures

    def close(self) -> None:
        """Release the NPU; every step is attempted, then the first failure (if any) is raised."""
        with self._lock:
            failures = self._teardown()
        for failure in failures[1:]:
            log.warning("pyACL teardown: %s", failure)
        if failures:
            raise failures[0]
