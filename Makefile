# Loupe's entry points; README.md explains each.
.PHONY: run test bench fixtures

# MODEL=gemma3 runs it on Gemma 3 270M instead of SmolLM2.
run:
	scripts/run.sh $(MODEL)

test:
	scripts/test.sh

bench:
	scripts/bench.sh

# Gemma 3 270M alone (scripts/bench.sh explains): load, memory, forward 1x16 against torch, and
# the tutorial's residual and head sweeps against nnsight in the same run.
.PHONY: bench-gemma3
bench-gemma3:
	scripts/bench.sh gemma3

# Regenerates the committed golden files (needs torch, transformers and nnsight: a developer
# machine, see README.md).
fixtures:
	python3 scripts/make_format_fixtures.py
	python3 scripts/make_tokenizer_fixtures.py
	python3 scripts/make_model_fixtures.py
	python3 scripts/make_generation_fixtures.py
	python3 scripts/make_module_call_fixtures.py
	python3 scripts/make_gradient_fixtures.py
	python3 scripts/nnsight_reference.py
	python3 scripts/nnsight_reference.py --model gemma3
	python3 scripts/make_tutorial_golden.py
	python3 scripts/make_protocol_vectors.py
	python3 scripts/make_example_plugin_fixture.py

# The daemon over loopback: round trips against a pyzmq echo, throughput, warm turnaround.
.PHONY: bench-daemon
bench-daemon:
	swift build -c release --product loupe
	python3 scripts/bench_daemon.py --loupe .build/release/loupe

# The tutorial's cells through the Python client on a warm daemon against the same cells on
# nnsight (where installed), and the cold start from no daemon to the first IOI result.
.PHONY: bench-tutorial
bench-tutorial:
	swift build -c release --product loupe
	python3 scripts/bench_tutorial.py --loupe .build/release/loupe

# Generation (32 greedy tokens), steering at every step and the logit lens on SmolLM2 through the
# Python client against HF transformers' generate and nnsight, in the same run.
.PHONY: bench-generate
bench-generate:
	swift build -c release --product loupe
	python3 scripts/bench_generate.py --loupe .build/release/loupe

# The engine against an earlier commit's in the same run (BASE, default HEAD~1): forward passes,
# the hook points' cost and the tutorial's sweeps on SmolLM2, with ratios.
.PHONY: bench-compare
bench-compare:
	python3 scripts/bench_compare.py --base $(or $(BASE),HEAD~1)
