# `make bench`: the benchmark harness of issue 7 (bench/run.py). Needs wrk (and nginx for the
# nginx baselines): apt-get install -y wrk nginx. Options: make bench BENCH_ARGS="--repeats 5".
PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench
bench:
	$(PYTHON) -m bench.run $(BENCH_ARGS)

# `make soak`: the soak run of issue 9 (bench/soak.py): mixed traffic, key churn, memory sampled
# over time, unexpected errors counted; never in CI. Options: make soak SOAK_ARGS="--duration 300".
SOAK_ARGS ?=

.PHONY: soak
soak:
	$(PYTHON) -m bench.soak $(SOAK_ARGS)
