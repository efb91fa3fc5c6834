"""The benchmark harness of issue 7: `make bench` (or `python -m bench.run`)."""
