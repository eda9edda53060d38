# make demo: set up .venv, make the synthetic data, run the four stages on it, score the submission.
# make test: set up .venv, run the test suite.
# make experiment: the paper's initialisation experiment on two synthetic sets (see docs/experiments.md).
# make bench: set up .venv, run every benchmark in bench/ and rewrite docs/benchmarks.md (see that file).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/synthetic.yaml
DEMO_DATA := data/synthetic
DEMO_RUN := runs/synthetic
# The demo's data: 16 cars (256 images) to train on, 2 cars (32 images) to submit, at 190 x 128
# (Carvana's aspect ratio, a tenth of its width) so that the whole pipeline runs on a CPU in minutes.
DEMO_DATA_ARGS := --cars 16 --test-cars 2 --size 190x128 --seed 0

.PHONY: demo test test-fast bench experiment venv clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEMO_DATA)/sample_submission.csv: | venv
	$(PY) -m ternaus.fixtures.carvana --out $(DEMO_DATA) $(DEMO_DATA_ARGS)

demo: venv $(DEMO_DATA)/sample_submission.csv
	$(PY) prepare_folds.py --config $(CONFIG)
	$(PY) train.py --config $(CONFIG)
	$(PY) predict.py --config $(CONFIG)
	$(PY) make_submission.py --config $(CONFIG)
	$(PY) report.py --config $(CONFIG)
	@echo "---- demo results ----"
	@$(PY) -m ternaus.evaluate --config $(CONFIG) $(DEMO_RUN)/submission.csv.gz $(DEMO_DATA)/test_masks --oof $(DEMO_RUN)/oof.csv
	@echo "submission: $(DEMO_RUN)/submission.csv.gz"
	@echo "report: $(DEMO_RUN)/report/index.html"

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# One at a time: two benchmarks side by side would share the cores and both would be wrong.
BENCHES := rle submission loading predict memory models train_step
bench: venv
	for name in $(BENCHES); do $(PY) -m bench.$$name || exit 1; done

# Pre-trained on one synthetic set (seed 3), compared on another (seed 7): same renderer, different cars.
EXP_DATA_ARGS := --cars 8 --test-cars 1 --size 96x64
experiment: venv
	test -f data/exp_source/sample_submission.csv || $(PY) -m ternaus.fixtures.carvana --out data/exp_source $(EXP_DATA_ARGS) --seed 3
	test -f data/exp_target/sample_submission.csv || $(PY) -m ternaus.fixtures.carvana --out data/exp_target $(EXP_DATA_ARGS) --seed 7
	$(PY) -m experiments.init_comparison --config experiments/init_comparison.yaml --pretrain-data data/exp_source

clean-demo:
	rm -rf $(DEMO_DATA) $(DEMO_RUN)
