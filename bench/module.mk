# bench/module.mk - `make bench`: runs bench/run.sh, which runs every
# bench/NN-*.sh step in order; each prints its figures and writes JSON
# (and plots) under bench-out/.  Every bench/bench-NAME.c is one program,
# $(BIN)/bench-NAME, linked with the codec and the attention library.

BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BIN)/%)

$(BIN)/bench-%: $(BUILD)/bench/bench-%.o $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) $(LDLIBS)

.PHONY: bench
bench: deps
	@$(MAKE) --no-print-directory all $(BENCH_BINS)
	@BIN=$(BIN) bash bench/run.sh

# `make bench-codec`: times encoding and decoding of large bodies
# (bench/bench-codec.c); not one of the bench/NN-*.sh steps.
.PHONY: bench-codec
bench-codec: $(BIN)/bench-codec
	$(BIN)/bench-codec

# The benchmarks build with the tests, so that they never rot between
# runs of `make bench` (tests/integration/test_bench_smoke.py runs two).
tests-build: $(BENCH_BINS)
