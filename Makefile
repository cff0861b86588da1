# `make demo` and `make test` do all set-up on a fresh machine (venv + pinned dependencies), then run.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# constraints.txt pins torch (always); constraints-lock.txt pins every other package to the versions the
# suites last passed with. UNLOCKED=1 leaves the lock out, to try the newest releases (then `make lock`).
CONSTRAINTS := $(CURDIR)/constraints.txt
ifneq ($(UNLOCKED),1)
CONSTRAINTS += $(CURDIR)/constraints-lock.txt
endif
export PIP_CONSTRAINT := $(CONSTRAINTS)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test test-slow bench bench-peer lock clean chromium

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, from the pinned CPU build, so nothing later resolves a CUDA torch.
$(VENV)/.installed: pyproject.toml constraints.txt constraints-lock.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0 numpy
	$(BIN)/pip install -q -e '.[dev,asr]'
	# openai-whisper declares triton (CUDA only); its real needs come with the asr extra.
	$(BIN)/pip install -q --no-deps openai-whisper
	touch $@

# open_clip (and PyPI's torchvision, a CUDA build) go beside the venv, not into it: importable there,
# torchvision breaks every transformers model import. Only the processes that use open_clip add this
# folder to PYTHONPATH (ivkit.open_clip_tower explains the import).
$(VENV)/.open_clip: $(VENV)/.installed
	$(BIN)/pip install -q --no-deps --target $(VENV)/open_clip_site open_clip_torch==3.3.0 torchvision==0.28.0 \
	  timm==1.0.31 ftfy==6.3.1 wcwidth==0.9.4
	touch $@

# llama-cpp-python (the GGUF fusion backend) has no wheel on PyPI: pip compiles llama.cpp, about 5 min
# on 2 cores with its tools, examples and multimodal library left out (35 min with them). Only the
# tests need it; `make demo` fuses with a transformers LM.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
                    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
$(VENV)/.llama_cpp: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e '.[llamacpp]'
	touch $@

# Hugging Face datasets decodes video and audio with torchcodec, which loads the system's FFmpeg libraries
# (the shard-compatibility test uses it): Debian's ffmpeg brings them. Installed here where apt-get can (root,
# or passwordless sudo); elsewhere that test says it was skipped and why.
$(VENV)/.ffmpeg_libs: $(VENV)/.installed
	@$(BIN)/python -c "import torchcodec.decoders" 2>/dev/null || $(call apt_install,ffmpeg)
	touch $@

# apt_install PACKAGES: best effort, as root or with passwordless sudo; says so when it cannot.
apt_install = { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
  $$SUDO apt-get install -y --no-install-recommends $(1) >/dev/null 2>&1 || \
  { $$SUDO apt-get update >/dev/null 2>&1 && $$SUDO apt-get install -y --no-install-recommends $(1) >/dev/null 2>&1; } || \
  echo "note: could not install $(1) with apt-get; the tests that need them are skipped"; }

setup: $(VENV)/.installed $(VENV)/.open_clip $(VENV)/.ffmpeg_libs

demo: setup
	bash scripts/demo.sh

test: setup $(VENV)/.llama_cpp $(VENV)/.ray
	$(BIN)/python -m pytest -q -x

$(VENV)/.ray: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[ray]'
	touch $@

# The report's gallery is checked in a real browser: Debian's chromium, installed when absent.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || $(call apt_install,chromium)

test-slow: setup $(VENV)/.ray chromium
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python bench/corpus_throughput.py
	$(BIN)/python bench/manifest_select.py
	$(BIN)/python bench/annotate_throughput.py
	$(BIN)/python bench/dedup_ann.py --n 200000 --queries 500 --planted 500 --nlist 512 --skip-hnsw
	$(BIN)/python bench/train_loader.py
	$(BIN)/python bench/universal_conversion.py
	$(BIN)/python bench/shard_index.py
	$(BIN)/python bench/image_text_build.py
	$(BIN)/python bench/executor_throughput.py

# ivkit beside video2dataset 1.3.0 (installed into its own venv under bench/out, ~6 GB, once) and ffmpeg's
# decode and remux limits, on the same 60 real files; appends its table to bench/RESULTS.md.
bench-peer: setup
	$(BIN)/python bench/peer_video2dataset.py

# Rewrite constraints-lock.txt from this venv (after the suites passed in it), keeping the file's header.
# Anything it still installs goes in under constraints.txt alone: the old lock would downgrade what an
# UNLOCKED=1 run upgraded.
lock: export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
lock: setup $(VENV)/.llama_cpp $(VENV)/.ray
	{ grep '^#' constraints-lock.txt; $(BIN)/pip freeze --exclude-editable | grep -v -E '^(torch|ivkit)=='; } \
	  > constraints-lock.txt.tmp && mv constraints-lock.txt.tmp constraints-lock.txt

clean:
	rm -rf corpora runs manifests/*.duckdb bench/out
