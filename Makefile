# kaggle_gan: NTU ML 2022 HW6 anime-face GANs, end to end.  `make help` lists everything.
#
# Every stage is a file target: a re-run skips finished work, a changed input
# (DATA, SET, PRESET) re-runs what depends on it, and an interrupted training
# run resumes from its last checkpoint.

PYTHON  ?= python3
VENV    ?= .venv
DATA    ?= https://huggingface.co/datasets/LeoFeng/MLHW_6/resolve/main/faces.zip
WORK    ?= work
DEVICE  ?= auto
SET     ?=
PRESET  ?= strong
RUN     ?= $(PRESET)
SIZE    ?= 64
COUNT   ?= 1000
FORMAT  ?= tgz
FORCE   ?=
INCEPTION ?=
BACKBONE ?=
WEIGHTS ?=
QUERY   ?=
K       ?= 5
DETECTOR  ?=
# GPUS=N trains with N processes under torchrun (DistributedDataParallel); empty or 1: one process
GPUS    ?=
TORCHRUN ?= $(BIN)/torchrun
# the folder to upload as a Kaggle dataset, and the dependencies Kaggle's and Colab's images lack
WHEELHOUSE ?= wheelhouse
WHEEL_DEPS ?= pytorch-fid
# torch and torchvision must be a matched pair (a lone torchvision upgrade breaks at import)
TORCH   ?= torch==2.14.1 torchvision==0.29.1

BIN      := $(VENV)/bin
KG       ?= $(BIN)/kaggle-gan
INSTALLED ?= $(VENV)/.installed
PREPARED := $(WORK)/data/prepare.json
RUN_DIR  := $(WORK)/runs/$(RUN)
SETTINGS := $(RUN_DIR)/.make-settings
GENERATOR := $(RUN_DIR)/generator.pt
IMAGES   := $(RUN_DIR)/images.json
SCORES   := $(RUN_DIR)/scores.json
SUBMISSION ?= submission
ARCHIVE  := $(SUBMISSION)/$(RUN)/images.$(FORMAT)

.PHONY: help setup prepare baseline medium wgan strong boss race toy cgan train generate submit score neighbours leaderboard presets test smoke bench wheel always

help:
	@echo "Targets:"
	@echo "  setup       create $(VENV) and install the package (every target does this first)"
	@echo "  prepare     decode DATA into $(WORK)/data (one uint8 array + manifest)"
	@echo "  baseline    the course's sample DCGAN (1 epoch)        -> submission/baseline/"
	@echo "  medium      DCGAN, 20 epochs                           -> submission/medium/"
	@echo "  wgan        WGAN with weight clipping                  -> submission/wgan/"
	@echo "  strong      WGAN-GP                                    -> submission/strong/"
	@echo "  boss        SN-ResNet, hinge, DiffAugment, TTUR        -> submission/boss/"
	@echo "              (each: prepare -> train -> generate COUNT images -> submit)"
	@echo "  train       train PRESET as RUN (resumes when interrupted)"
	@echo "  generate    COUNT images from RUN into $(WORK)/runs/RUN/images"
	@echo "  submit      validate and pack RUN's images into submission/RUN/images.FORMAT"
	@echo "  score       FID + anime-face detection rate of RUN's images, with HW6 verdicts"
	@echo "  neighbours  nearest training images of RUN's images (or QUERY=folder|file): copies?"
	@echo "  race        every preset, same data, same images shown (32px on CPU, <30 min) -> $(WORK)/race/race.csv, .png"
	@echo "  toy         2-D ring of 8 Gaussians, every loss: pictures per checkpoint, mode coverage -> $(WORK)/toy/"
	@echo "  cgan        class-conditional GAN on sklearn's digits (or CGAN_DATA), graded by a classifier -> $(WORK)/cgan/"
	@echo "  leaderboard every scored run, best first"
	@echo "  presets     what each preset changes, and why"
	@echo "  test        run the test suite"
	@echo "  smoke       the whole pipeline with a tiny model, minutes on a CPU"
	@echo "  bench       our training/sampling speed against the sample code's loop -> $(WORK)/bench.csv"
	@echo "  wheel       the package's wheel + $(WHEEL_DEPS) in $(WHEELHOUSE)/, to attach as a Kaggle dataset"
	@echo "Variables (current value):"
	@echo "  DATA=$(DATA)"
	@echo "      a zip, a folder of images or a URL"
	@echo "  WORK=$(WORK)  DEVICE=$(DEVICE)  PRESET=$(PRESET)  RUN=$(RUN)  SIZE=$(SIZE)  COUNT=$(COUNT)"
	@echo "  SET='$(SET)'   space-separated key=value overrides, e.g. SET='train.epochs=5 train.batch_size=128'"
	@echo "  FORMAT=$(FORMAT) (tgz for HW6, zip for Kaggle)  FORCE=1 replaces an existing archive"
	@echo "  INCEPTION=path|random:SEED  DETECTOR=path   (offline scoring)"
	@echo "  BACKBONE=clip|inception|timm-name  WEIGHTS=path|random:SEED  QUERY=folder|file  K=$(K)   (neighbours)"
	@echo "  GPUS=$(GPUS)   N: train on N GPUs with torchrun + DDP (the batch is split N ways)"
	@echo "  TOY_ARGS='$(TOY_ARGS)'  e.g. '--mixtures ring8,grid25 --losses wgan-gp'   CGAN_ARGS='$(CGAN_ARGS)'"

setup: $(INSTALLED)
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# prepare always runs (it is a no-op when DATA is unchanged) and touches its
# output only when something changed, so downstream targets stay up to date.
prepare: $(PREPARED)
$(PREPARED): $(INSTALLED) always
	$(KG) prepare --data '$(DATA)' --work '$(WORK)' --size $(SIZE)

# the preset and overrides of a run, rewritten only when they change
$(SETTINGS): always
	@mkdir -p '$(@D)'
	@echo '$(PRESET) $(SET)' | cmp -s - '$@' || echo '$(PRESET) $(SET)' > '$@'

train: $(GENERATOR)
$(GENERATOR): $(PREPARED) $(SETTINGS)
	$(if $(filter-out 0 1,$(GPUS)),$(TORCHRUN) --standalone --nproc_per_node=$(GPUS) -m kaggle_gan.cli,$(KG)) train --preset $(PRESET) --run-name '$(RUN)' --work '$(WORK)' --device $(DEVICE) $(if $(strip $(SET)),--set '$(SET)')

generate: $(IMAGES)
$(IMAGES): $(GENERATOR)
	$(KG) generate --run '$(RUN)' --work '$(WORK)' --count $(COUNT) --size 64 --device $(DEVICE)

submit: $(ARCHIVE)
$(ARCHIVE): $(IMAGES)
	$(KG) submit --run '$(RUN)' --work '$(WORK)' --count $(COUNT) --format $(FORMAT) --out '$@' $(if $(FORCE),--force)

baseline medium wgan strong boss:
	@$(MAKE) --no-print-directory submit PRESET=$@

score: $(SCORES)
$(SCORES): $(IMAGES)
	$(KG) score --run '$(RUN)' --work '$(WORK)' --device $(DEVICE) --out '$@' \
		$(if $(INCEPTION),--inception-weights '$(INCEPTION)') $(if $(DETECTOR),--detector '$(DETECTOR)')

# always runs: the feature index of the training data is cached, a query is seconds
neighbours: $(if $(QUERY),$(INSTALLED),$(IMAGES))
	$(KG) neighbours --run '$(RUN)' --work '$(WORK)' --device $(DEVICE) --k $(K) $(if $(QUERY),--images '$(QUERY)') \
		$(if $(BACKBONE),--backbone '$(BACKBONE)') $(if $(WEIGHTS),--weights '$(WEIGHTS)')

# every preset for the same images shown to the critic, scored along the way (FID: the cached Inception
# weights, else random:0, a labelled proxy). GPU, full scale: RACE_ARGS='--resolution 64 --width 64 --kimg 2000 --count 1000'
RACE_ARGS ?=
race: $(PREPARED)
	$(KG) race --work '$(WORK)' --device $(DEVICE) $(if $(INCEPTION),--inception-weights '$(INCEPTION)') \
		$(if $(DETECTOR),--detector '$(DETECTOR)') $(RACE_ARGS)

# every loss on the 2-D ring of 8 Gaussians with the one training loop (CPU, ~3 min); a re-run resumes
TOY_ARGS ?=
toy: $(INSTALLED)
	$(KG) toy --work '$(WORK)' $(TOY_ARGS)

# class-conditional GAN on scikit-learn's bundled digits (CGAN_DATA=folder of class_name/*.jpg for your own),
# graded by a classifier trained on the real images; a re-run resumes
CGAN_DATA ?= digits
CGAN_ARGS ?=
cgan: $(INSTALLED)
	$(KG) cgan --work '$(WORK)' --data '$(CGAN_DATA)' --device $(DEVICE) $(CGAN_ARGS)

leaderboard: $(INSTALLED)
	$(KG) leaderboard --work '$(WORK)'

presets: $(INSTALLED)
	$(KG) presets

# our loop against the sample-code-style loop on DEVICE (GPU: ~5 min; CPU: reduced steps);
# e.g. BENCH_ARGS='--steps 100 --windows 7' or BENCH_ARGS='--ablate --compile'
BENCH_ARGS ?=
bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench.py --device $(DEVICE) --csv $(WORK)/bench.csv $(BENCH_ARGS)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

smoke:
	@$(MAKE) --no-print-directory submit PRESET=smoke RUN=smoke WORK='$(WORK)/smoke'

# Built beside the target and renamed, so an interrupted build never leaves half a wheelhouse.
# No build isolation: the build uses the setuptools already in the venv (works offline).
wheel: $(INSTALLED)
	rm -rf '$(WHEELHOUSE).tmp' build  # a stale build/ would ship modules deleted since
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w '$(WHEELHOUSE).tmp' .
	$(BIN)/python -m pip wheel --quiet --no-deps -w '$(WHEELHOUSE).tmp' $(WHEEL_DEPS)
	rm -rf '$(WHEELHOUSE)' && mv '$(WHEELHOUSE).tmp' '$(WHEELHOUSE)'
	@ls -l '$(WHEELHOUSE)'

always:
