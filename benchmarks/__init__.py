"""The benchmark scripts, one module each: run them from the repository root as ``python -m benchmarks.<script>``."""
