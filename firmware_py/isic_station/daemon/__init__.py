"""The daemon: the Station and the parts it is given (`wiring.build_parts`), its threads (`pipeline`),
its command handlers, the model slot, the lot's spec check, systemd notification and logging.
"""
