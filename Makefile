# kaggle_gan: NTU ML 2022 HW6 anime-face GANs, end to end.  `make help` lists everything.
#
# Every stage is a file target: a re-run skips finished work, a changed input
# (DATA, SET, PRESET, COUNT, INCEPTION, DETECTOR, REF_COUNT) re-runs what
# depends on it, and an interrupted training run resumes from its last checkpoint.
#
# A run remembers how it was trained: PRESET, SET and DATA are written to
# WORK/runs/RUN/.make-run when RUN is first trained, and every later target for
# that RUN uses them unless you give them again on the command line.

PYTHON  ?= python3
VENV    ?= .venv
HW6_URL := https://huggingface.co/datasets/LeoFeng/MLHW_6/resolve/main/faces.zip
DATA    ?= $(HW6_URL)
WORK    ?= work
DEVICE  ?= auto
SET     ?=
PRESET  ?= strong
RUN     ?= $(PRESET)
RUN     := $(RUN)
SIZE    ?= 64
COUNT   ?= 1000
# generate from the run's best.pt (the evaluation's best point, when training evaluated) or last (generator.pt)
CHECKPOINT ?= best
# SEEDS or CONDITIONS (one image per seed or set) set generate's count unless COUNT is given on the command line
GEN_COUNT = $(if $(and $(or $(SEEDS),$(CONDITIONS)),$(filter-out command line,$(origin COUNT))),,--count $(COUNT))
# a conditional run: the class or set of objects of every image (CONDITION='red cube,blue sphere'), or a file of
# sets, one image each, in the i-CLEVR lab's format (CONDITIONS=sets.json)
CONDITION ?=
CONDITIONS ?=
# jpg (the homework) or png (Kaggle competitions that ask for PNGs; pack them with FORMAT=zip)
IMAGE_FORMAT ?= jpg
# sampling: truncation psi (1 = none), one seed per image (0-999, 5,17,...), a pool of POOL images ranked by
# SELECT=critic|detector of which COUNT are kept; interpolate: SEEDS to pass through (default 1,2,3), FRAMES
TRUNCATION ?= 1
SEEDS   ?=
POOL    ?=
SELECT  ?=
FRAMES  ?= 60
FORMAT  ?= tgz
FORCE   ?=
INCEPTION ?=
REF_COUNT ?=
BACKBONE ?=
WEIGHTS ?=
INPUT_SIZE ?=
QUERY   ?=
K       ?= 5
DETECTOR  ?=
# score's feature network instead of Inception (dinov2, clip, a timm name) and its weights (a file or random:SEED)
FEATURES ?=
FEATURE_WEIGHTS ?=
# MiFID's memorisation distance against the reference images (empty: the default) or all training images (all)
MEMORISATION_REF ?=
# GPUS=N trains with N processes under torchrun (DistributedDataParallel); empty or 1: one process
GPUS    ?=
TORCHRUN ?= $(BIN)/torchrun
# the folder to upload as a Kaggle dataset, and the dependencies Kaggle's and Colab's images lack
WHEELHOUSE ?= wheelhouse
WHEEL_DEPS ?= pytorch-fid
# torch and torchvision must be a matched pair (a lone torchvision upgrade breaks at import)
TORCH   ?= torch==2.14.1 torchvision==0.29.1

# Run names become folders and target names: letters, digits, '.', '_' and '-' only (no spaces, no '/').
ifneq ($(shell printf '%s' '$(subst ','\'',$(RUN))' | LC_ALL=C grep -xE '[A-Za-z0-9._-]+' | grep -vxE '[.]+'),$(RUN))
$(error error: RUN='$(RUN)' is not a valid run name: use letters, digits, '.', '_' and '-' (e.g. RUN=my_run))
endif

BIN      := $(VENV)/bin
KG       ?= $(BIN)/kaggle-gan
INSTALLED ?= $(VENV)/.installed
PREPARED := $(WORK)/data/prepare.json
RUN_DIR  := $(WORK)/runs/$(RUN)
RECORD   := $(RUN_DIR)/.make-run
GENERATOR := $(RUN_DIR)/generator.pt
IMAGES   := $(RUN_DIR)/images.json
SCORES   := $(RUN_DIR)/scores.json
SUBMISSION ?= submission
ARCHIVE  := $(SUBMISSION)/$(RUN)/images.$(FORMAT)

# What the run was trained with, unless given again on the command line (on purpose).
recall = $(shell sed -n 's/^$(1)=//p' '$(RECORD)' 2>/dev/null)
differs = $(filter-out $(1),$(2))$(filter-out $(2),$(1))
ifneq ($(wildcard $(RECORD)),)
  ifneq ($(origin PRESET),command line)
    PRESET := $(call recall,PRESET)
  endif
  ifneq ($(origin SET),command line)
    SET := $(call recall,SET)
  endif
  ifneq ($(origin DATA),command line)
    DATA := $(call recall,DATA)
  endif
  # a value given on the command line that differs from the record: train again (resume, or refuse clearly)
  CHANGED := $(call differs,$(call recall,PRESET),$(PRESET))$(call differs,$(call recall,SET),$(SET))
  CHANGED += $(call differs,$(call recall,DATA),$(DATA))
  RETRAIN := $(if $(strip $(CHANGED)),always)
  KEEP_PREPARED :=
else
  RETRAIN :=
  # DATA neither given nor recorded, and data already prepared in WORK: use it as it is (no download)
  KEEP_PREPARED := $(if $(filter file,$(origin DATA)),$(wildcard $(PREPARED)))
endif
# training happens only when generator.pt is missing or RETRAIN: only then does it need the prepared data
TRAINS := $(or $(RETRAIN),$(if $(wildcard $(GENERATOR)),,yes))
record_run = @printf 'PRESET=%s\nSET=%s\nDATA=%s\n' '$(PRESET)' '$(SET)' '$(DATA)' > '$(RECORD).tmp' \
	&& mv '$(RECORD).tmp' '$(RECORD)'
# $(call remember,FILE,VALUES): FILE holds VALUES and is rewritten only when they change, so what depends on it re-runs
remember = @mkdir -p '$(dir $(1))'; echo '$(2)' | cmp -s - '$(1)' || echo '$(2)' > '$(1)'

.PHONY: help setup prepare baseline medium wgan strong boss race toy cgan iclevr train generate interpolate submit score neighbours leaderboard presets test smoke bench wheel always

help:
	@echo "Targets:"
	@echo "  setup       create $(VENV) and install the package (every target does this first)"
	@echo "  prepare     decode DATA into $(WORK)/data (one uint8 array + manifest)"
	@echo "  baseline    the course's sample DCGAN (1 epoch)        -> submission/baseline/"
	@echo "  medium      DCGAN, 20 epochs                           -> submission/medium/"
	@echo "  wgan        WGAN with weight clipping                  -> submission/wgan/"
	@echo "  strong      WGAN-GP                                    -> submission/strong/"
	@echo "  boss        DCGAN + spectral norm, hinge, DiffAugment   -> submission/boss/"
	@echo "              (each: prepare -> train -> generate COUNT images -> submit)"
	@echo "  train       train PRESET as RUN (resumes when interrupted)"
	@echo "  generate    COUNT images from RUN into $(WORK)/runs/RUN/images"
	@echo "  interpolate a GIF/MP4 walking the noise through SEEDS (default 1,2,3) + a strip of 8 frames"
	@echo "  submit      validate and pack RUN's images into submission/RUN/images.FORMAT"
	@echo "  score       FID + anime-face detection rate of RUN's images, with HW6 verdicts"
	@echo "  neighbours  nearest training images of RUN's images (or QUERY=folder|file): copies?"
	@echo "  race        every preset, same data, same images shown (32px on CPU, <30 min) -> $(WORK)/race/race.csv, .png"
	@echo "  toy         2-D ring of 8 Gaussians, every loss: pictures per checkpoint, mode coverage -> $(WORK)/toy/"
	@echo "  cgan        class-conditional GAN on sklearn's digits (or CGAN_DATA), graded by a classifier -> $(WORK)/cgan/"
	@echo "  iclevr      multi-object conditional GAN (i-CLEVR lab; ICLEVR_DATA= for the real one), lab accuracy -> $(WORK)/iclevr/"
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
	@echo "  INCEPTION=path|random:SEED  DETECTOR=path  REF_COUNT=N   (scoring; a change re-scores; also train's evaluation)"
	@echo "  FEATURES=dinov2|clip|timm-name  FEATURE_WEIGHTS=path|random:SEED   (score with another feature network)"
	@echo "  MEMORISATION_REF=all   (score: MiFID against every training image, as Kaggle; default the reference)"
	@echo "  CHECKPOINT=$(CHECKPOINT) (best: best.pt when training evaluated; last: generator.pt)  IMAGE_FORMAT=$(IMAGE_FORMAT) (jpg|png)"
	@echo "  TRUNCATION=$(TRUNCATION) (psi, 0.5-1)  SEEDS=0-999|1,2,3  POOL=M SELECT=critic|detector (keep COUNT of M)  FRAMES=$(FRAMES)"
	@echo "  CONDITION='red cube,blue sphere'|CLASS  CONDITIONS=sets.json   (generate/interpolate of a conditional run)"
	@echo "  BACKBONE=clip|inception|timm-name  WEIGHTS=path|random:SEED  INPUT_SIZE=N  QUERY=folder|file  K=$(K)   (neighbours)"
	@echo "  RUN remembers PRESET, SET and DATA from its first training ($(RECORD)); give them again to change them"
	@echo "  GPUS=$(GPUS)   N: train on N GPUs with torchrun + DDP (the batch is split N ways)"
	@echo "  TOY_ARGS='$(TOY_ARGS)'  e.g. '--mixtures ring8,grid25 --losses wgan-gp'   CGAN_ARGS='$(CGAN_ARGS)'"

setup: $(INSTALLED)
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# prepare runs whenever DATA is given or recorded (a no-op when it is unchanged; it touches its output only
# when something changed); with no DATA anywhere, data already prepared in WORK is used as it is.
prepare: $(PREPARED)
$(PREPARED): $(INSTALLED) $(if $(KEEP_PREPARED),,always)
	$(KG) prepare --data '$(DATA)' --work '$(WORK)' --size $(SIZE)

# Trains when generator.pt is missing, or when PRESET, SET or DATA on the command line differ from the run's
# record. The record is written at the first attempt and rewritten only after a training that succeeded, so a
# refused or interrupted attempt never changes what the next command recalls.
train: $(GENERATOR)
$(GENERATOR): $(RETRAIN) | $(if $(TRAINS),$(PREPARED))
	@mkdir -p '$(RUN_DIR)'
	$(if $(wildcard $(RECORD)),,$(record_run))
	$(if $(filter-out 0 1,$(GPUS)),$(TORCHRUN) --standalone --nproc_per_node=$(GPUS) -m kaggle_gan.cli,$(KG)) train --preset $(PRESET) --run-name '$(RUN)' --work '$(WORK)' --device $(DEVICE) $(if $(strip $(SET)),--set '$(SET)') \
		$(if $(INCEPTION),--inception-weights '$(INCEPTION)') $(if $(DETECTOR),--detector '$(DETECTOR)')
	$(record_run)

generate: $(IMAGES)
$(IMAGES): $(GENERATOR) $(RUN_DIR)/.make-generate
	$(KG) generate --run '$(RUN)' --work '$(WORK)' $(GEN_COUNT) --size 64 --device $(DEVICE) --checkpoint $(CHECKPOINT) \
		--image-format $(IMAGE_FORMAT) --truncation $(TRUNCATION) $(if $(SEEDS),--seeds '$(SEEDS)') \
		$(if $(POOL),--pool $(POOL)) $(if $(SELECT),--select $(SELECT)) $(if $(DETECTOR),--detector '$(DETECTOR)') \
		$(if $(CONDITION),--condition '$(CONDITION)') $(if $(CONDITIONS),--conditions '$(CONDITIONS)')
$(RUN_DIR)/.make-generate: always
	$(call remember,$@,COUNT=$(COUNT) CHECKPOINT=$(CHECKPOINT) IMAGE_FORMAT=$(IMAGE_FORMAT) TRUNCATION=$(TRUNCATION) SEEDS=$(SEEDS) POOL=$(POOL) SELECT=$(SELECT) CONDITION=$(CONDITION) CONDITIONS=$(CONDITIONS))

# always runs (seconds): RUN/interpolation/seeds-....gif, .mp4, -strip.png
interpolate: $(GENERATOR)
	$(KG) interpolate --run '$(RUN)' --work '$(WORK)' --device $(DEVICE) --checkpoint $(CHECKPOINT) --frames $(FRAMES) \
		--truncation $(TRUNCATION) $(if $(SEEDS),--seeds '$(SEEDS)') $(if $(CONDITION),--condition '$(CONDITION)')

# replaces an archive that submit itself wrote (new images); anything else there is refused unless FORCE=1
submit: $(ARCHIVE)
$(ARCHIVE): $(IMAGES)
	$(KG) submit --run '$(RUN)' --work '$(WORK)' --count $(COUNT) --format $(FORMAT) --out '$@' --update $(if $(FORCE),--force)

baseline medium wgan strong boss:
	@$(MAKE) --no-print-directory submit PRESET=$@

score: $(SCORES)
$(SCORES): $(IMAGES) $(RUN_DIR)/.make-score | $(PREPARED)
	$(KG) score --run '$(RUN)' --work '$(WORK)' --device $(DEVICE) --out '$@' $(if $(REF_COUNT),--ref-count $(REF_COUNT)) \
		$(if $(INCEPTION),--inception-weights '$(INCEPTION)') $(if $(DETECTOR),--detector '$(DETECTOR)') \
		$(if $(FEATURES),--features '$(FEATURES)') $(if $(FEATURE_WEIGHTS),--feature-weights '$(FEATURE_WEIGHTS)') \
		$(if $(MEMORISATION_REF),--memorisation-ref $(MEMORISATION_REF))
$(RUN_DIR)/.make-score: always
	$(call remember,$@,INCEPTION=$(INCEPTION) DETECTOR=$(DETECTOR) REF_COUNT=$(REF_COUNT) FEATURES=$(FEATURES) FEATURE_WEIGHTS=$(FEATURE_WEIGHTS) MEMORISATION_REF=$(MEMORISATION_REF))

# always runs: the feature index of the training data is cached, a query is seconds
neighbours: $(if $(QUERY),$(INSTALLED),$(IMAGES)) | $(PREPARED)
	$(KG) neighbours --run '$(RUN)' --work '$(WORK)' --device $(DEVICE) --k $(K) $(if $(QUERY),--images '$(QUERY)') \
		$(if $(BACKBONE),--backbone '$(BACKBONE)') $(if $(WEIGHTS),--weights '$(WEIGHTS)') \
		$(if $(INPUT_SIZE),--input-size $(INPUT_SIZE))

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

# multi-object conditional GAN (the i-CLEVR lab): renders 18,000 scenes once (ICLEVR_DATA=folder for the real
# lab's), trains ~20 min on 2 CPU cores, grades test.json and new_test.json; a re-run resumes
ICLEVR_DATA ?=
ICLEVR_ARGS ?=
# other condition files in the lab's format to grade too (space-separated; no retraining)
ICLEVR_TESTS ?=
iclevr: $(INSTALLED)
	$(KG) iclevr --work '$(WORK)' --data '$(ICLEVR_DATA)' --device $(DEVICE) $(foreach f,$(ICLEVR_TESTS),--tests '$(f)') $(ICLEVR_ARGS)

leaderboard: $(INSTALLED)
	$(KG) leaderboard --work '$(WORK)'

presets: $(INSTALLED)
	$(KG) presets

# our loop against the sample-code-style loop on DEVICE (GPU: ~5 min; CPU: reduced steps);
# e.g. BENCH_ARGS='--steps 100 --windows 7' or BENCH_ARGS='--ablate --compile'
BENCH_ARGS ?=
bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench.py --device $(DEVICE) --csv $(WORK)/bench.csv $(BENCH_ARGS)

# the import layers first (seconds; pyproject.toml's [tool.importlinter]), then the suite
test: $(INSTALLED)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

smoke:
	@$(MAKE) --no-print-directory submit PRESET=smoke RUN=smoke

# Built beside the target and renamed, so an interrupted build never leaves half a wheelhouse.
# No build isolation: the build uses the setuptools already in the venv (works offline).
wheel: $(INSTALLED)
	rm -rf '$(WHEELHOUSE).tmp' build  # a stale build/ would ship modules deleted since
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w '$(WHEELHOUSE).tmp' .
	$(BIN)/python -m pip wheel --quiet --no-deps -w '$(WHEELHOUSE).tmp' $(WHEEL_DEPS)
	rm -rf '$(WHEELHOUSE)' && mv '$(WHEELHOUSE).tmp' '$(WHEELHOUSE)'
	@ls -l '$(WHEELHOUSE)'

always:
