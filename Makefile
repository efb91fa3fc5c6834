# `make bench`: the benchmark harness of issue 7 (bench/run.py). Needs wrk (and nginx for the
# nginx baselines): apt-get install -y wrk nginx. Options: make bench BENCH_ARGS="--repeats 5".
PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench
bench:
	$(PYTHON) -m bench.run $(BENCH_ARGS)
