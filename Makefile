# `make run` and `make test` do all the set-up on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VALIDATOR := tools/gltf-validator

.PHONY: setup run examples test lint bench clean

setup: $(VENV)/.installed $(VALIDATOR)/node_modules/.installed studio

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# CPU PyTorch for the neural-field tests: this exact version installs from the machine's local wheel
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	touch $@

# The Khronos glTF validator checks every GLB we write (tests/pipeline/test_gltf_validator.py).
$(VALIDATOR)/node_modules/.installed: $(VALIDATOR)/package.json
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix $(VALIDATOR) && touch $@; \
	else \
		echo "npm not found: the glTF validator test will be skipped (install Node.js to run it)"; \
	fi

# The studio page's bundle (three.js viewer and all) is committed, so a pip install needs no npm; this rebuilds it
# when web/src or web/package.json change.
STUDIO := src/orfeas/web/static/app.js
# Swagger UI and ReDoc for the offline /docs and /redoc pages, copied from their npm packages (licences beside them,
# source-map comments stripped since the maps are not shipped).
STATIC := src/orfeas/web/static
DOCS_ASSETS := $(STATIC)/swagger-ui-bundle.js $(STATIC)/swagger-ui.css $(STATIC)/redoc.standalone.js \
	$(STATIC)/swagger-ui.LICENSE $(STATIC)/redoc.LICENSE
.PHONY: studio
studio: $(STUDIO) $(DOCS_ASSETS)

web/node_modules/.installed: web/package.json $(wildcard web/package-lock.json)
	@if command -v npm >/dev/null 2>&1; then \
		if [ -f web/package-lock.json ]; then npm ci --silent --no-audit --no-fund --prefix web; \
		else npm install --silent --no-audit --no-fund --prefix web; fi && touch $@; \
	fi

$(STUDIO): web/package.json $(wildcard web/package-lock.json) $(wildcard web/src/*.js) | web/node_modules/.installed
	@if [ -f web/node_modules/.installed ]; then \
		npx --prefix web esbuild web/src/main.js --bundle --format=esm --minify --log-level=warning --outfile=$@ && \
		$(PYTHON) tools/bundle_sources.py > $@.sources; \
	else \
		echo "npm not found: keeping the committed $@ (install Node.js to rebuild the studio page)"; \
	fi

$(STATIC)/swagger-ui-bundle.js $(STATIC)/swagger-ui.css: $(STATIC)/%: web/package.json | web/node_modules/.installed
	@if [ -f web/node_modules/.installed ]; then sed '$$ {/^\/[*\/]# sourceMappingURL=/d}' web/node_modules/swagger-ui-dist/$* > $@; \
	else echo "npm not found: keeping the committed $@"; fi

$(STATIC)/redoc.standalone.js: web/package.json | web/node_modules/.installed
	@if [ -f web/node_modules/.installed ]; then sed '$$ {/^\/[*\/]# sourceMappingURL=/d}' web/node_modules/redoc/bundles/redoc.standalone.js > $@; \
	else echo "npm not found: keeping the committed $@"; fi

$(STATIC)/swagger-ui.LICENSE $(STATIC)/redoc.LICENSE: $(STATIC)/%.LICENSE: web/package.json | web/node_modules/.installed
	@if [ -f web/node_modules/.installed ]; then \
		cd web/node_modules && cat $(if $(filter swagger-ui,$*),swagger-ui-dist/LICENSE swagger-ui-dist/NOTICE \
			swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt,redoc/LICENSE redoc/bundles/redoc.standalone.js.LICENSE.txt) \
			> $(CURDIR)/$@; \
	else echo "npm not found: keeping the committed $@"; fi

run: setup
	ORFEAS_AUTH=$${ORFEAS_AUTH:-off} $(BIN)/orfeas serve --host 127.0.0.1 --port 8000 --data-dir orfeas-data

# Turn every image in examples/ into models under out/, without the server.
examples: setup
	$(BIN)/orfeas generate examples/*.png --out out --format glb,obj,stl,ply

# The hunyuan3d generator's tests (tests/pipeline/test_hunyuan.py) need what hy3dgen's shape stage imports.
# torchvision imports on these machines only beside torch 2.14.1 (a CUDA build that runs on the CPU; pip takes the
# pair from the machine's disk). hy3dgen goes in with --no-deps (see the `hunyuan` extra in pyproject.toml). Its
# licence excludes the EU, the UK and South Korea: there, run `make test HUNYUAN=0` (those tests then skip).
HUNYUAN ?= 1
HUNYUAN_STAMP := $(if $(filter 1,$(HUNYUAN)),$(VENV)/.hunyuan-installed)

$(VENV)/.hunyuan-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev,hunyuan]'
	$(BIN)/python -m pip install --quiet --no-deps hy3dgen==2.0.2
	touch $@

test: setup $(HUNYUAN_STAMP)
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy
	$(BIN)/lint-imports
	$(BIN)/mypy src
	$(BIN)/pytest

bench: setup
	$(BIN)/python bench/pipeline_bench.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/accuracy_bench.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/service_bench.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/agents_load.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/extract_bench.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/cluster_bench.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/quality_bench.py --write docs/BENCHMARKS.md
	$(BIN)/python bench/progress_bench.py --write docs/BENCHMARKS.md
	@if command -v wrk >/dev/null 2>&1; then $(BIN)/python bench/throughput_bench.py --write docs/BENCHMARKS.md; \
	else echo "wrk not found: skipping bench/throughput_bench.py (apt-get install wrk)"; fi

clean:
	rm -rf out .pytest_cache .ruff_cache
