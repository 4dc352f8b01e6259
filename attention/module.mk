# attention/module.mk - the attention library (libattn.a): backend seam,
# CPU backend, and the CUDA backend when nvcc is available.

ATTN_LIB  := $(BUILD)/libattn.a
ATTN_SRCS := $(wildcard attention/*.c attention/cpu/*.c)

ifeq ($(HAVE_CUDA),1)
# The CUDA backend (attention/cuda/): SASS for sm_80 and sm_90 plus PTX that
# newer GPUs compile at load time.  attention/cuda/module.mk adds its tests,
# benchmark and resource report.
ATTN_SRCS   := $(filter-out attention/nocuda.c,$(ATTN_SRCS))
CUDA_HOME   ?= $(patsubst %/bin/,%,$(dir $(shell command -v $(NVCC))))
NVCC_WARN   := -Xcompiler -Wall,-Wextra
ifeq ($(WERROR),1)
NVCC_WARN   += -Werror all-warnings
endif
NVCCFLAGS   ?= -O3 -std=c++17 -Xcompiler -fPIC \
               -gencode arch=compute_80,code=sm_80 \
               -gencode arch=compute_90,code=sm_90 \
               -gencode arch=compute_90,code=compute_90
ATTN_CU_SRCS := $(wildcard attention/cuda/*.cu)
ATTN_CU_OBJS := $(ATTN_CU_SRCS:%.cu=$(BUILD)/%.o)
ATTN_LDLIBS  := -L$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++ -ldl -lrt
CPPFLAGS     += -DMRAD_HAVE_CUDA=1
$(BUILD)/attention/cuda/%.o: attention/cuda/%.cu $(wildcard attention/cuda/*.h attention/cuda/*.cuh) attention/attn.h attention/attn-impl.h attention/select-rule.h
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(NVCC_WARN) -I. -c $< -o $@
else
ATTN_CU_OBJS :=
ATTN_LDLIBS  :=
endif

ATTN_OBJS := $(ATTN_SRCS:%.c=$(BUILD)/%.o) $(ATTN_CU_OBJS)

# The CPU backend's inner loops want -O3 (vectorisation, unrolling); no
# -march: the portable kernels must run on any x86-64, and ISA-specific
# kernels are chosen at run time.
$(BUILD)/attention/cpu/%.o: CFLAGS += -O3
# ISA-specific kernel variants: these two files alone get the ISA flags and
# contract a*b+c into FMA; kernels.c calls them only on CPUs that have it.
ifneq ($(filter x86_64 amd64,$(shell uname -m)),)
$(BUILD)/attention/cpu/kernels-avx2.o: CFLAGS += -mavx2 -mfma -ffp-contract=fast
$(BUILD)/attention/cpu/kernels-avx512.o: CFLAGS += -mavx512f -mfma -ffp-contract=fast
endif

$(ATTN_LIB): $(ATTN_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

LIBS += $(ATTN_LIB)
