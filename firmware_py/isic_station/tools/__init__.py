"""Operator tools beside the daemon: the console sub-commands (`run`, `demo`, `doctor`, `calibrate`,
`bench ...`, `schema-docs`, `broker-acl`) and the demo bench the tests and benchmarks share. Nothing
the daemon runs imports from here.
"""
