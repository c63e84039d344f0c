"""The kernel tier: tiny helper file systems on the patched pyfuse3 (pyfuse3_lockfs.py,
lockops_fs.py here), mounted in a subprocess through /dev/fuse and driven with real system calls.
They test the pyfuse3 patch and the FUSE lock handlers without the `wasmer-dfs` CLI (mounts of
the CLI are the tests/mount tier; tests/unit never goes through the kernel). Every mount is
started and torn down by tests/helperfs.py, also on failure, its process stopped by its pid."""
