"""sd_notify against a real AF_UNIX datagram socket, and the progress-tied watchdog."""

import os
import threading
import time

import pytest

from isic_station.daemon.sd_notify import ProgressWatchdog, ServiceNotifier, watchdog_interval_s


def test_messages_arrive_as_key_value_lines(notify_receiver):
    notifier = ServiceNotifier.from_environment({"NOTIFY_SOCKET": notify_receiver.notify_socket})
    assert notifier.enabled
    assert notifier.ready("Measuring: model loaded, spectrometer and microscope open")
    assert notify_receiver.receive(2.0) == {
        "READY": "1", "STATUS": "Measuring: model loaded, spectrometer and microscope open"}
    assert notifier.status("Degraded: microscope absent, signal-only model")
    assert notify_receiver.receive(2.0) == {"STATUS": "Degraded: microscope absent, signal-only model"}
    assert notifier.watchdog()
    assert notify_receiver.receive(2.0) == {"WATCHDOG": "1"}
    assert notifier.stopping("Stopping: flushing 3 queued results")
    assert notify_receiver.receive(2.0) == {"STOPPING": "1", "STATUS": "Stopping: flushing 3 queued results"}
    assert notifier.notify(READY=1)
    assert notify_receiver.receive(2.0) == {"READY": "1"}
    notifier.close()


def test_newline_in_a_value_cannot_inject_a_field(path_notify_receiver):
    notifier = ServiceNotifier(path_notify_receiver.notify_socket)
    notifier.status("line one\nREADY=1")
    assert path_notify_receiver.receive(2.0) == {"STATUS": "line one READY=1"}


def test_field_names_must_be_sd_notify_variables():
    notifier = ServiceNotifier(None)
    with pytest.raises(ValueError, match="status"):
        notifier.notify(status="lower case")
    with pytest.raises(ValueError, match="at least one"):
        notifier.notify()


def test_without_notify_socket_every_call_is_a_quiet_no_op():
    notifier = ServiceNotifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready("x") is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_unknown_address_form_turns_notification_off(caplog):
    notifier = ServiceNotifier("vsock:2:1234")
    assert not notifier.enabled
    assert "vsock:2:1234" in caplog.text


def test_a_vanished_manager_socket_is_logged_not_raised(path_notify_receiver, caplog):
    notifier = ServiceNotifier(path_notify_receiver.notify_socket)
    path_notify_receiver.close()
    assert notifier.status("nobody listens") is False
    assert path_notify_receiver.notify_socket in caplog.text


def test_watchdog_interval_follows_sd_watchdog_enabled_rules():
    me = str(os.getpid())
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": me}) == 0.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None


def _pings(messages):
    return [m for m in messages if m.get("WATCHDOG") == "1"]


def test_pings_follow_progress_and_stop_when_the_pipeline_stalls(path_notify_receiver):
    env = {"NOTIFY_SOCKET": path_notify_receiver.notify_socket, "WATCHDOG_USEC": "400000"}
    watchdog = ProgressWatchdog.from_environment(ServiceNotifier.from_environment(env), stall_after_s=0.6,
                                                 environ=env)
    assert watchdog.enabled and watchdog.interval_s == 0.4
    producing = threading.Event()
    producing.set()
    done = threading.Event()

    def pipeline():
        n = 0
        while not done.is_set():
            if producing.is_set():
                n += 1
                watchdog.progress(f"measurement {n}")
            time.sleep(0.05)

    worker = threading.Thread(target=pipeline, daemon=True)
    with watchdog:
        worker.start()
        try:
            # Progress arrives: a ping every 0.2 s (half of WATCHDOG_USEC).
            assert len(_pings(path_notify_receiver.collect(1.2))) >= 3
            assert not watchdog.stalled

            # The pipeline stops: a STATUS says so, and the pings stop.
            producing.clear()
            stalled = path_notify_receiver.wait_for(lambda m: "STATUS" in m, timeout=3.0, what="STATUS")
            assert stalled["STATUS"].startswith("Pipeline stalled")
            assert "measurement" in stalled["STATUS"]
            assert watchdog.stalled
            assert _pings(path_notify_receiver.collect(1.0)) == []

            # Progress resumes before systemd gave up: pings resume and the status says so.
            producing.set()
            resumed = path_notify_receiver.wait_for(lambda m: "STATUS" in m, timeout=3.0, what="STATUS")
            assert "progressing again" in resumed["STATUS"]
            assert len(_pings(path_notify_receiver.collect(1.0))) >= 2
        finally:
            done.set()
            worker.join(timeout=5)
    # Stopped: no more pings.
    path_notify_receiver.collect(0.3)
    assert _pings(path_notify_receiver.collect(0.6)) == []


def test_unarmed_watchdog_runs_no_thread_and_sends_nothing(path_notify_receiver):
    notifier = ServiceNotifier(path_notify_receiver.notify_socket)
    watchdog = ProgressWatchdog.from_environment(notifier, environ={})
    assert not watchdog.enabled
    before = threading.active_count()
    watchdog.start()
    watchdog.progress("measurement 1")
    assert threading.active_count() == before
    assert path_notify_receiver.collect(0.3) == []
    watchdog.stop()


def test_default_stall_window_is_one_interval_and_bad_values_are_refused():
    assert ProgressWatchdog(ServiceNotifier(None), 30.0).stall_after_s == 30.0
    with pytest.raises(ValueError, match="interval_s"):
        ProgressWatchdog(ServiceNotifier(None), 0.0)
    with pytest.raises(ValueError, match="stall_after_s"):
        ProgressWatchdog(ServiceNotifier(None), 1.0, stall_after_s=-1)
