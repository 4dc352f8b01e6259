# protocol/module.mk - the wire codec (libproto.a): msgpack and JSON.

PROTO_LIB  := $(BUILD)/libproto.a
PROTO_SRCS := $(wildcard protocol/*.c)
PROTO_OBJS := $(PROTO_SRCS:%.c=$(BUILD)/%.o)
PROTO_LDLIBS := -lmsgpackc

$(PROTO_LIB): $(PROTO_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

LIBS += $(PROTO_LIB)

# `make fuzz`: libFuzzer (clang) over the request, answer and error-body
# decoders, seeded with tests/fuzz/corpus/proto; new inputs it finds go
# to $(BUILD)/fuzz/corpus.  FUZZ_SECONDS bounds each run.  A double-colon
# rule, so other modules can add fuzz targets of their own.
FUZZ_SECONDS ?= 60
PROTO_FUZZ := $(BUILD)/fuzz/fuzz-proto

$(PROTO_FUZZ): protocol/fuzz/fuzz-proto.c $(PROTO_SRCS) $(wildcard protocol/*.h) $(ATTN_LIB)
	@mkdir -p $(@D)
	clang $(CPPFLAGS) -std=c11 -g -O1 -fsanitize=fuzzer,address,undefined \
	    -o $@ protocol/fuzz/fuzz-proto.c $(PROTO_SRCS) $(ATTN_LIB) \
	    $(PROTO_LDLIBS) $(ATTN_LDLIBS) -lm

.PHONY: fuzz
fuzz:: $(PROTO_FUZZ)
	@mkdir -p $(BUILD)/fuzz/corpus
	$(PROTO_FUZZ) -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	    $(BUILD)/fuzz/corpus tests/fuzz/corpus/proto

# `make bench-codec`: times encoding and decoding of large bodies.
PROTO_BENCH := $(BIN)/bench-codec

$(PROTO_BENCH): $(BUILD)/protocol/bench/bench-codec.o $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) $(LDLIBS)

.PHONY: bench-codec
bench-codec: $(PROTO_BENCH)
	$(PROTO_BENCH)
