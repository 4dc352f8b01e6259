# tests/module.mk - cmocka unit tests: tests/unit/<module>/test-*.c, each
# built into $(BUILD)/tests/<module>/test-* and linked with the libraries.
# Sources named tests/unit/<module>/helper-*.c are linked into every test
# (fixtures and references shared by several tests).

UNIT_TEST_SRCS := $(wildcard tests/unit/*/test-*.c)
UNIT_TESTS     := $(UNIT_TEST_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
UNIT_HELPER_SRCS := $(wildcard tests/unit/*/helper-*.c)
UNIT_HELPER_OBJS := $(UNIT_HELPER_SRCS:%.c=$(BUILD)/%.o)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(UNIT_HELPER_OBJS) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) -lcmocka $(LDLIBS)

.PHONY: tests-build
tests-build: $(UNIT_TESTS)

# Allocation-failure injection over decode -> compute -> encode: the
# libraries' allocations are redirected at link time to counting wrappers
# in the test (no hook in the library sources).
ALLOCFAIL_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=posix_memalign,--wrap=aligned_alloc
$(BUILD)/tests/attention/test-allocfail: LDFLAGS += $(ALLOCFAIL_WRAP)
# The same for each entry point of the codec on its own.
$(BUILD)/tests/protocol/test-nomem: LDFLAGS += $(ALLOCFAIL_WRAP)

# `make fuzz`: libFuzzer, built with clang and the fuzzer and sanitizers,
# over two targets in turn; FUZZ_SECONDS bounds each run.  Double-colon
# rules, so that another target can add a rule of its own.
FUZZ_SECONDS ?= 60
FUZZ_CC := clang $(CPPFLAGS) -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined

# The codec (tests/fuzz/fuzz-proto.c): the request, answer and error-body
# decoders.  Seeds are the request bodies of tests/data, copied at run
# time into $(BUILD)/fuzz/seeds-proto; what the run finds goes to
# $(BUILD)/fuzz/corpus.
PROTO_FUZZ := $(BUILD)/fuzz/fuzz-proto
PROTO_FUZZ_SEEDS := $(wildcard tests/data/*.msgpack tests/data/*.json)

$(PROTO_FUZZ): tests/fuzz/fuzz-proto.c $(PROTO_SRCS) $(wildcard protocol/*.h) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(FUZZ_CC) -o $@ tests/fuzz/fuzz-proto.c $(PROTO_SRCS) $(ATTN_LIB) \
	    $(PROTO_LDLIBS) $(ATTN_LDLIBS) -lm

.PHONY: fuzz
fuzz:: $(PROTO_FUZZ)
	@rm -rf $(BUILD)/fuzz/seeds-proto
	@mkdir -p $(BUILD)/fuzz/corpus $(BUILD)/fuzz/seeds-proto
	cp $(PROTO_FUZZ_SEEDS) $(BUILD)/fuzz/seeds-proto/
	$(PROTO_FUZZ) -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    $(BUILD)/fuzz/corpus $(BUILD)/fuzz/seeds-proto

# The HTTP request path of an in-process daemon (tests/fuzz/fuzz-http.c),
# built from the server sources.  Seeds are tests/fuzz/corpus/http; what
# the run finds goes to $(BUILD)/fuzz/corpus-http.
HTTP_FUZZ := $(BUILD)/fuzz/fuzz-http
HTTP_FUZZ_SRCS := tests/fuzz/fuzz-http.c $(filter-out server/main.c,$(MRAD_SRCS)) $(PROTO_SRCS)

$(HTTP_FUZZ): $(HTTP_FUZZ_SRCS) $(wildcard server/*.h protocol/*.h) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(FUZZ_CC) -o $@ $(HTTP_FUZZ_SRCS) $(ATTN_LIB) $(PROTO_LDLIBS) $(ATTN_LDLIBS) \
	    -lmicrohttpd -luv -lm -pthread

fuzz:: $(HTTP_FUZZ)
	@mkdir -p $(BUILD)/fuzz/corpus-http
	$(HTTP_FUZZ) -max_total_time=$(FUZZ_SECONDS) -max_len=16384 -timeout=20 \
	    $(BUILD)/fuzz/corpus-http tests/fuzz/corpus/http

# The daemon's API-key comparison, unit-tested on its own object.
$(BUILD)/tests/server/test-auth: $(BUILD)/server/auth.o

# The scheduler, unit-tested with a backend of the test's own.
$(BUILD)/tests/server/test-sched: $(BUILD)/server/sched.o $(BUILD)/server/log.o $(BUILD)/server/metrics.o
$(BUILD)/tests/server/test-sched: LDLIBS += $(PROTO_LIB) -luv

# The shared-memory regions.
$(BUILD)/tests/server/test-shm: $(BUILD)/server/shm.o

# The connection guard, on loopback sockets.
$(BUILD)/tests/server/test-guard: $(BUILD)/server/guard.o $(BUILD)/server/sched.o $(BUILD)/server/log.o $(BUILD)/server/metrics.o
$(BUILD)/tests/server/test-guard: LDLIBS += $(PROTO_LIB) -luv

# The session table, with the CPU backend's stores.
$(BUILD)/tests/server/test-kv: $(BUILD)/server/kv.o $(BUILD)/server/sched.o $(BUILD)/server/log.o $(BUILD)/server/metrics.o
$(BUILD)/tests/server/test-kv: LDLIBS += $(PROTO_LIB) $(ATTN_LIB) -luv $(ATTN_LDLIBS)

# `make soak`: overload at twice the measured capacity, then half of it,
# SOAK_SECONDS each (tests/soak/soak.py; a 10 s version runs in make test).
SOAK_SECONDS ?= 60
.PHONY: soak
soak: deps
	@$(MAKE) --no-print-directory all
	@mkdir -p $(BUILD)/soak
	MRAD_BIN_DIR=$(CURDIR)/$(BIN) .venv/bin/python tests/soak/soak.py \
	    --seconds $(SOAK_SECONDS) --json $(BUILD)/soak/report.json
