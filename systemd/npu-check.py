# The installer's NPU smoke check, run by systemd/install.sh as `python -c "$(cat npu-check.py)"`
# under the service's own sandbox (systemd-run with the unit's User=, devices, EnvironmentFile=...),
# so it proves what the service itself will meet: CANN's libraries load, `acl` imports, device 0
# opens and the run mode reads. Same calls and order as isic_station.inference.acl_backend.
# Python 3.8+; exits non-zero with the failing call and its ACL error code.
import sys

import acl


def check(call, ret):
    if ret != 0:
        sys.exit(f"NPU check: {call} returned ACL error {ret}")


check("acl.init", acl.init())
check("acl.rt.set_device(0)", acl.rt.set_device(0))
mode, ret = acl.rt.get_run_mode()
check("acl.rt.get_run_mode", ret)
check("acl.rt.reset_device(0)", acl.rt.reset_device(0))
check("acl.finalize", acl.finalize())
print(f"NPU check: pyACL from {acl.__file__} opened device 0, run mode {'ACL_HOST' if mode == 1 else 'ACL_DEVICE'}")
