# Makefile - builds mrad: the attention library, the wire codec, the daemon,
# the clients and the tests.  Plain GNU make; each module adds its sources
# and targets in its own module.mk.
#
#   make                 build everything into bin/ (libraries in build/)
#   make test            install what is missing, build, run every test
#   make run             install what is missing, build, serve on 127.0.0.1:8080
#   make bench           benchmarks (figures printed, JSON written)
#   make CUDA=0|1|auto   force the CUDA backend off/on (auto: when nvcc exists)
#   make SANITIZE=address,undefined test   the suite under sanitizers
#   make WERROR=1        warnings are errors (CI)

.DEFAULT_GOAL := all
SHELL := /bin/bash

CC       ?= cc
NVCC     ?= nvcc
CUDA     ?= auto
SANITIZE ?=
WERROR   ?= 0
OPT      ?= -O2

ifeq ($(SANITIZE),)
BUILD := build
BIN   := bin
else
BUILD := build/san
BIN   := build/san/bin
SANFLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif

WARN     := -Wall -Wextra
ifeq ($(WERROR),1)
WARN     += -Werror
endif
# The project's one version string (mrad --version, mractl --version,
# mra-load --version, /v1/info and mra_client.__version__): the file VERSION.
MRAD_VERSION := $(shell cat VERSION)
CPPFLAGS := -I. -D_GNU_SOURCE -DMRAD_VERSION='"$(MRAD_VERSION)"'
CFLAGS   := -std=c11 $(OPT) -g $(WARN) -pthread -MMD -MP -fno-strict-aliasing $(SANFLAGS)
LDFLAGS  := -pthread $(SANFLAGS)
LDLIBS   := -lm

# CUDA: auto-detect nvcc unless forced.
ifeq ($(CUDA),auto)
HAVE_CUDA := $(shell command -v $(NVCC) >/dev/null 2>&1 && echo 1 || echo 0)
else
HAVE_CUDA := $(CUDA)
endif

# Filled in by the module fragments.
LIBS        :=
BINS        :=
UNIT_TESTS  :=
CLEAN_EXTRA :=

include attention/module.mk
include attention/cuda/module.mk
include protocol/module.mk
include server/module.mk
include clients/module.mk
include tests/module.mk
include bench/module.mk

# The test build of mrad compiles the same sources by a rule of its own.
$(MRAD_TEST_OBJS): VERSION

.PHONY: all deps test run clean format
all: $(LIBS) $(BINS)

# Installs Debian packages (as root) and the project-local Python venv.
deps:
	@bash tools/deps.sh

# Objects depend on VERSION too: the version is in their flags.
$(BUILD)/%.o: %.c VERSION
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

test: deps
	@$(MAKE) --no-print-directory all tests-build
	@BUILD=$(BUILD) BIN=$(BIN) SANITIZE=$(SANITIZE) bash tests/run.sh

run: deps
	@$(MAKE) --no-print-directory all
	exec $(BIN)/mrad --backend auto

format:
	clang-format -i $$(git ls-files '*.c' '*.h' '*.cu' '*.cuh')

clean:
	rm -rf build bin $(CLEAN_EXTRA)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
