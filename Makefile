# Loupe's entry points; README.md explains each.
.PHONY: run test bench fixtures

run:
	scripts/run.sh

test:
	scripts/test.sh

bench:
	scripts/bench.sh

# Regenerates the committed golden files (needs torch and transformers: a developer machine).
fixtures:
	python3 scripts/make_format_fixtures.py
	python3 scripts/make_tokenizer_fixtures.py
	python3 scripts/make_model_fixtures.py
