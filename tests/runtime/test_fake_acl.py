"""The FAKE acl punishes what the real runtime would: otherwise the pyACL backend's tests prove nothing."""

import threading

import numpy as np
import pytest

from fakes.fake_acl import (
    ACL_DEVICE,
    ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID,
    ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID,
    ACL_ERROR_GE_PARAM_INVALID,
    ACL_ERROR_INTERNAL_ERROR,
    ACL_ERROR_INVALID_MODEL_ID,
    ACL_ERROR_INVALID_PARAM,
    ACL_ERROR_REPEAT_FINALIZE,
    ACL_ERROR_REPEAT_INITIALIZE,
    ACL_ERROR_RT_CONTEXT_NULL,
    ACL_ERROR_RT_PARAM_INVALID,
    ACL_ERROR_UNINITIALIZE,
    ACL_HOST,
    ACL_MEMCPY_DEVICE_TO_DEVICE,
    ACL_MEMCPY_HOST_TO_DEVICE,
    FakeAcl,
)


def bring_up(fake: FakeAcl):
    assert fake.init() == 0
    assert fake.rt.set_device(0) == 0
    context, ret = fake.rt.create_context(0)
    assert ret == 0
    return context


def load_signal_model(fake: FakeAcl, manifest):
    """Load the signal-only .om and wire a dataset per side, as a correct caller would."""
    model_id, ret = fake.mdl.load_from_file(str(manifest.graphs["signal_only"].om_path))
    assert ret == 0
    desc = fake.mdl.create_desc()
    assert fake.mdl.get_desc(desc, model_id) == 0
    datasets = []
    for count, size_of in ((fake.mdl.get_num_inputs(desc), fake.mdl.get_input_size_by_index),
                           (fake.mdl.get_num_outputs(desc), fake.mdl.get_output_size_by_index)):
        dataset = fake.mdl.create_dataset()
        for index in range(count):
            ptr, ret = fake.rt.malloc(size_of(desc, index), 2)
            assert ret == 0
            fake.mdl.add_dataset_buffer(dataset, fake.create_data_buffer(ptr, size_of(desc, index)))
        datasets.append(dataset)
    return model_id, desc, datasets[0], datasets[1]


def test_malloc_before_init_or_without_a_context_is_refused():
    fake = FakeAcl()
    assert fake.rt.malloc(64, 2)[1] == ACL_ERROR_UNINITIALIZE
    fake.init()
    fake.rt.set_device(0)
    assert fake.rt.malloc(64, 2)[1] == ACL_ERROR_RT_CONTEXT_NULL
    assert len(fake.violations) == 2


def test_execute_before_load_is_refused():
    fake = FakeAcl()
    bring_up(fake)
    assert fake.mdl.execute(1, fake.mdl.create_dataset(), fake.mdl.create_dataset()) == ACL_ERROR_INVALID_MODEL_ID


def test_memcpy_larger_than_the_destination_is_refused():
    fake = FakeAcl()
    bring_up(fake)
    dst, _ = fake.rt.malloc(16, 2)
    src = fake.util.bytes_to_ptr(bytes(32))
    assert fake.rt.memcpy(dst, 16, src, 32, ACL_MEMCPY_DEVICE_TO_DEVICE) == ACL_ERROR_INVALID_PARAM
    assert "count 32 > dst_max 16" in fake.violations[-1]


@pytest.mark.parametrize("run_mode", [ACL_DEVICE, ACL_HOST])
@pytest.mark.parametrize("kind", [ACL_MEMCPY_HOST_TO_DEVICE, ACL_MEMCPY_DEVICE_TO_DEVICE])
def test_copy_kind_is_ignored_as_cann_documents_it(run_mode, kind):
    """aclrtMemcpy's kind is a reserved parameter: the addresses decide, any kind copies."""
    fake = FakeAcl(run_mode=run_mode)
    bring_up(fake)
    dst, _ = fake.rt.malloc(16, 2)
    data = np.arange(4, dtype=np.float32).tobytes()
    assert fake.rt.memcpy(dst, 16, fake.util.bytes_to_ptr(data), 16, kind) == 0
    assert fake.util.ptr_to_bytes(dst, 16) == data
    assert fake.memcpy_kinds == [kind] and fake.violations == []


def test_memcpy_from_unknown_memory_is_refused():
    fake = FakeAcl()
    bring_up(fake)
    dst, _ = fake.rt.malloc(16, 2)
    assert fake.rt.memcpy(dst, 16, 0x10, 16, ACL_MEMCPY_DEVICE_TO_DEVICE) == ACL_ERROR_RT_PARAM_INVALID
    assert "source 0x10+16 is not memory the fake knows" in fake.violations[-1]


def test_create_data_buffer_returns_0_on_failure_and_allows_an_empty_buffer():
    fake = FakeAcl()
    bring_up(fake)
    assert fake.create_data_buffer(0x1234, 16) == 0  # not memory from acl.rt.malloc
    assert fake.create_data_buffer(0, 16) == 0  # an empty buffer must have size 0
    assert fake.create_data_buffer(0, 0) != 0


def test_bytes_to_ptr_takes_bytes_only_and_raises_valueerror():
    fake = FakeAcl()
    with pytest.raises(ValueError, match="needs an byte as argument"):
        fake.util.bytes_to_ptr(bytearray(4))


def test_cann5_allows_one_init_per_process_even_after_finalize():
    fake = FakeAcl()
    assert fake.init() == 0
    assert fake.init() == ACL_ERROR_REPEAT_INITIALIZE
    assert fake.finalize() == 0
    assert fake.init() == ACL_ERROR_REPEAT_INITIALIZE
    assert "after acl.finalize" in fake.violations[-1]


def test_cann85_counts_init_calls_and_allows_init_after_finalize():
    fake = FakeAcl(one_init_per_process=False)
    assert fake.init() == 0
    assert fake.init() == ACL_ERROR_REPEAT_INITIALIZE  # reported, and counted
    assert fake.finalize() == 0 and fake.leaks() == []
    assert fake.finalize() == ACL_ERROR_REPEAT_FINALIZE
    assert fake.init() == 0


def test_load_of_a_missing_or_empty_om_returns_the_graph_engine_codes(tiny_manifest, tmp_path):
    fake = FakeAcl()
    bring_up(fake)
    assert fake.mdl.load_from_file(str(tmp_path / "absent.om")) == (None, ACL_ERROR_GE_EXEC_MODEL_PATH_INVALID)
    om = tiny_manifest.graphs["signal_only"].om_path
    om.write_bytes(b"")
    assert fake.mdl.load_from_file(str(om)) == (None, ACL_ERROR_GE_EXEC_MODEL_DATA_SIZE_INVALID)


def test_dataset_buffer_of_the_wrong_size_is_refused_at_execute(tiny_manifest):
    fake = FakeAcl()
    bring_up(fake)
    model_id, _, _, outputs = load_signal_model(fake, tiny_manifest)
    short = fake.mdl.create_dataset()
    ptr, _ = fake.rt.malloc(64, 2)
    fake.mdl.add_dataset_buffer(short, fake.create_data_buffer(ptr, 64))  # the input needs 32 * 4 = 128 bytes
    assert fake.mdl.execute(model_id, short, outputs) == ACL_ERROR_GE_PARAM_INVALID
    assert "input 0 buffer holds 64 bytes, the model's input needs 128" in fake.violations[-1]


def test_execute_in_a_thread_without_the_context_is_refused(tiny_manifest):
    fake = FakeAcl()
    context = bring_up(fake)
    model_id, _, inputs, outputs = load_signal_model(fake, tiny_manifest)
    codes = []

    def execute(set_context: bool) -> None:
        if set_context:
            fake.rt.set_context(context)
        codes.append(fake.mdl.execute(model_id, inputs, outputs))

    for set_context in (False, True):
        thread = threading.Thread(target=execute, args=(set_context,))
        thread.start()
        thread.join(timeout=10)
    assert codes == [ACL_ERROR_RT_CONTEXT_NULL, 0]


def test_concurrent_execute_on_one_model_is_refused(tiny_manifest):
    fake = FakeAcl()
    context = bring_up(fake)
    model_id, _, inputs, outputs = load_signal_model(fake, tiny_manifest)
    model = fake._models[model_id]
    entered, release = threading.Event(), threading.Event()
    real_run = model.session.run

    def slow_run(*args):
        entered.set()
        release.wait(timeout=10)
        return real_run(*args)

    model.session = type("SlowSession", (), {"run": staticmethod(slow_run)})()
    codes = []

    def first() -> None:
        fake.rt.set_context(context)
        codes.append(fake.mdl.execute(model_id, inputs, outputs))

    thread = threading.Thread(target=first)
    thread.start()
    assert entered.wait(timeout=10)
    second = fake.mdl.execute(model_id, inputs, outputs)
    release.set()
    thread.join(timeout=10)
    assert (second, codes) == (ACL_ERROR_INTERNAL_ERROR, [0])


def test_freeing_memory_under_a_live_data_buffer_is_refused():
    fake = FakeAcl()
    bring_up(fake)
    ptr, _ = fake.rt.malloc(32, 2)
    fake.create_data_buffer(ptr, 32)
    assert fake.rt.free(ptr) == ACL_ERROR_INTERNAL_ERROR
    assert "still point into it" in fake.violations[-1]


def test_finalize_with_live_resources_is_refused_and_leaks_lists_them(tiny_manifest):
    fake = FakeAcl()
    bring_up(fake)
    load_signal_model(fake, tiny_manifest)
    assert fake.finalize() == ACL_ERROR_INTERNAL_ERROR
    leaks = fake.leaks()
    assert any("model id 1" in leak for leak in leaks)
    assert sum("device memory" in leak for leak in leaks) == 3
    assert "context" in " ".join(leaks) and "device 0 not reset (1 set_device call(s) open)" in leaks
