"""The station daemon end to end: config, pipeline, commands, demo, doctor."""
