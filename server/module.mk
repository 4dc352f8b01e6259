# server/module.mk - the daemon, bin/mrad, and its test build.

MRAD_SRCS := $(wildcard server/*.c)
MRAD_OBJS := $(MRAD_SRCS:%.c=$(BUILD)/%.o)

ifneq ($(MRAD_SRCS),)
$(BIN)/mrad: $(MRAD_OBJS) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) -lmicrohttpd -luv $(LDLIBS)
BINS += $(BIN)/mrad

# The test build of the daemon: the same sources compiled with
# MRAD_TEST_HOOKS, which makes a request carrying the header
# "X-Mrad-Inject-Fault: 1" fail its batch inside the backend, so that the
# integration tests can check that such a failure stays with its batch.
# bin/mrad has no such code.  Built with the tests, never installed.
MRAD_TEST_BIN  := $(BUILD)/tests/server/mrad-testhooks
MRAD_TEST_OBJS := $(MRAD_SRCS:%.c=$(BUILD)/testhooks/%.o)

$(BUILD)/testhooks/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -DMRAD_TEST_HOOKS $(CFLAGS) -c $< -o $@

$(MRAD_TEST_BIN): $(MRAD_TEST_OBJS) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) -lmicrohttpd -luv $(LDLIBS)

tests-build: $(MRAD_TEST_BIN)
endif
