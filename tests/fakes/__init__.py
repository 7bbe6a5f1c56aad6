"""Test doubles for parts that cannot exist on a test machine (the Ascend NPU) and a tiny model.

Each is named as a fake and checks what it can of the contract it stands in for.
"""
