# `make bench`: the benchmark harness of issue 7 (bench/run.py). Needs wrk (and nginx for the
# nginx baselines): apt-get install -y wrk nginx. Options: make bench BENCH_ARGS="--repeats 5".
PYTHON ?= .venv/bin/python
BENCH_ARGS ?=

.PHONY: bench bench-limits
bench:
	$(PYTHON) -m bench.run $(BENCH_ARGS)
	$(MAKE) bench-limits

# Issue 20: rate limits across a fleet (3 instances x 2 workers, one Redis): the limiter alone
# against a Kong-style one-call-per-request limiter, then real gateways over HTTP.
bench-limits:
	PYTHONPATH=. $(PYTHON) -m bench.limits_fleet
	PYTHONPATH=. $(PYTHON) -m bench.limits_gateways

# `make soak`: the soak run of issue 9 (bench/soak.py): mixed traffic, key churn, memory sampled
# over time, unexpected errors counted; never in CI. Options: make soak SOAK_ARGS="--duration 300".
SOAK_ARGS ?=

.PHONY: soak
soak:
	$(PYTHON) -m bench.soak $(SOAK_ARGS)
