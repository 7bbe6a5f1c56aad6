"""Inference runtime: backends, registry, predictor, the fake acl."""
