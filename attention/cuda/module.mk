# attention/cuda/module.mk - GPU-only targets of the CUDA backend:
#
#   make test-cuda        the attention unit tests against the CUDA backend,
#                         plus tests/cuda/; without a GPU the host emulations
#                         only (says so); a GPU on which the backend does not
#                         open fails (tests/cuda/run.sh)
#   make bench-cuda       bench/cuda/bench.py: mrad vs PyTorch SDPA, JSON +
#                         table (needs a GPU and a python with torch: PYTHON=;
#                         fails, saying why, without them)
#   make cuda-resources   registers / spills of every kernel (ptxas -v)
#
# The library objects themselves are built by attention/module.mk.

.PHONY: test-cuda bench-cuda cuda-resources

ifeq ($(HAVE_CUDA),1)
CUDA_TEST_SRCS := $(wildcard tests/cuda/test-*.c tests/cuda/test-*.cpp)
CUDA_TESTS     := $(patsubst tests/cuda/%,$(BUILD)/tests/cuda/%,$(basename $(CUDA_TEST_SRCS)))
CUDA_PROBE     := $(BUILD)/tests/cuda/gpu-probe

$(BUILD)/tests/cuda/%: $(BUILD)/tests/cuda/%.o $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(ATTN_LDLIBS) -lcmocka $(LDLIBS)

# The tests call the CUDA runtime directly (device buffers, streams).
$(BUILD)/tests/cuda/%.o: CPPFLAGS += -I$(CUDA_HOME)/include

# C++ tests: host replays of device code (no nvcc or GPU needed to run
# them; C++20 for std::barrier, and the kernels' #pragma unroll is
# meaningless to the host compiler).
CXX ?= c++
$(BUILD)/tests/cuda/%.o: tests/cuda/%.cpp
	@mkdir -p $(@D)
	$(CXX) $(CPPFLAGS) -std=c++20 $(OPT) -g $(WARN) -Wno-unknown-pragmas -pthread -MMD -MP $(SANFLAGS) -c $< -o $@

# Keep the objects: make would delete them as intermediates.
.PRECIOUS: $(BUILD)/tests/cuda/%.o

# The CUDA tests run in the whole suite too: without a GPU they say so.
tests-build: $(CUDA_TESTS) $(CUDA_PROBE)

test-cuda: tests-build
	@BUILD=$(BUILD) bash tests/cuda/run.sh

# A shared library of the attention library for the Python benchmark
# (ctypes, in the same process as PyTorch so device pointers can be shared).
# The C objects of libattn.a are position-independent executables' code
# (the default toolchain's -fPIE), whose thread-local variables use a model
# that a shared library cannot hold, so the library's C sources are
# compiled once more with -fPIC into $(BUILD)/pic/, with the flags each
# gets in libattn.a (attention/module.mk); the CUDA objects are -fPIC
# already.  -Bsymbolic binds the library's references to itself.
CUDA_BENCH_SO  := $(BUILD)/libmrad-bench.so
CUDA_BENCH_PIC := $(ATTN_SRCS:%.c=$(BUILD)/pic/%.o) $(BUILD)/pic/bench/cuda/shim.o
$(BUILD)/pic/%.o: %.c VERSION
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fPIC -c $< -o $@
$(BUILD)/pic/attention/cpu/%.o: CFLAGS += -O3
ifneq ($(filter x86_64 amd64,$(shell uname -m)),)
$(BUILD)/pic/attention/cpu/kernels-avx2.o: CFLAGS += -mavx2 -mfma -ffp-contract=fast
$(BUILD)/pic/attention/cpu/kernels-avx512.o: CFLAGS += -mavx512f -mfma -ffp-contract=fast
endif
.PRECIOUS: $(BUILD)/pic/%.o
$(CUDA_BENCH_SO): $(CUDA_BENCH_PIC) $(ATTN_CU_OBJS)
	$(CC) -shared -Wl,-Bsymbolic $(LDFLAGS) -o $@ $^ $(ATTN_LDLIBS) $(LDLIBS)

PYTHON ?= python3
bench-cuda: $(CUDA_BENCH_SO)
	@MRAD_BENCH_SO=$(CUDA_BENCH_SO) $(PYTHON) bench/cuda/bench.py

cuda-resources:
	@NVCC=$(NVCC) bash attention/cuda/resources.sh
else
# Without the backend there is nothing to test, unless the machine has a
# GPU (then the backend should have been built); nothing to measure.
test-cuda:
	@if compgen -G '/dev/nvidia[0-9]*' > /dev/null; then \
	    echo "test-cuda: FAILED: this machine has a GPU but the CUDA backend is not built (no nvcc, or CUDA=0)" >&2; exit 1; fi
	@echo "test-cuda: the CUDA backend is not built (no nvcc, or CUDA=0) and there is no GPU: nothing to test"
bench-cuda:
	@echo "bench-cuda: FAILED: the CUDA backend is not built (no nvcc, or CUDA=0)" >&2; exit 1
cuda-resources:
	@echo "cuda-resources: the CUDA backend is not built (no nvcc, or CUDA=0)"
endif
