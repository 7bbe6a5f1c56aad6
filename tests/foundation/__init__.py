"""Tests of the project skeleton: CLI plumbing, manifest loader, shared helpers."""
