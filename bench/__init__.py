"""Benchmark harness of wasmer-dfs: compares our FUSE mount with peer file systems."""
