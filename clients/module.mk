# clients/module.mk - the C client library (libmraclient.a, on libcurl),
# bin/mractl (offline runner and server-facing subcommands) and
# bin/mra-load (open-loop load generator on libuv + libcurl).

MRAC_LIB    := $(BUILD)/libmraclient.a
MRAC_SRCS   := $(wildcard clients/c/*.c)
MRAC_OBJS   := $(MRAC_SRCS:%.c=$(BUILD)/%.o)
MRAC_LDLIBS := -lcurl

$(MRAC_LIB): $(MRAC_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

LIBS += $(MRAC_LIB)

# mractl's entry point (main.c) comes with the offline runner; the
# server-facing subcommands (remote.c, random.c) only link into it.
MRACTL_SRCS := $(wildcard clients/mractl/*.c)
MRACTL_OBJS := $(MRACTL_SRCS:%.c=$(BUILD)/%.o)

ifneq ($(wildcard clients/mractl/main.c),)
$(BIN)/mractl: $(MRACTL_OBJS) $(MRAC_LIB) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(MRAC_LDLIBS) $(PROTO_LDLIBS) $(ATTN_LDLIBS) $(LDLIBS)
BINS += $(BIN)/mractl
endif

MRALOAD_SRCS := $(wildcard clients/load/*.c)
MRALOAD_OBJS := $(MRALOAD_SRCS:%.c=$(BUILD)/%.o)

ifneq ($(MRALOAD_SRCS),)
$(BIN)/mra-load: $(MRALOAD_OBJS) $(MRAC_LIB) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(MRAC_LDLIBS) -luv $(PROTO_LDLIBS) $(ATTN_LDLIBS) $(LDLIBS)
BINS += $(BIN)/mra-load
endif

# The client library's unit test (tests/unit/clients/test-mraclient.c)
# links the library and libcurl on top of what every unit test links.
MRAC_TEST := $(BUILD)/tests/clients/test-mraclient
$(MRAC_TEST): $(MRAC_LIB)
$(MRAC_TEST): LDLIBS := $(MRAC_LIB) $(PROTO_LIB) $(ATTN_LIB) $(MRAC_LDLIBS) \
	$(PROTO_LDLIBS) $(ATTN_LDLIBS) -lm

# The calls on sessions against a live daemon
# (clients/c/tests/test-mraclient-kv.c): the test starts
# $MRAD_BIN_DIR/mrad itself, so it runs with the unit tests.
MRAC_KV_TEST := $(BUILD)/tests/clients/test-mraclient-kv
$(MRAC_KV_TEST): $(BUILD)/clients/c/tests/test-mraclient-kv.o $(MRAC_LIB) \
		$(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(MRAC_LDLIBS) $(PROTO_LDLIBS) $(ATTN_LDLIBS) \
	    -lcmocka $(LDLIBS)

tests-build: $(MRAC_KV_TEST)
