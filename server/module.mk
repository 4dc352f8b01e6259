# server/module.mk - the daemon, bin/mrad, and its test build.

MRAD_SRCS := $(wildcard server/*.c)

# The OpenAPI document (protocol/openapi.yaml), served at GET
# /v1/openapi.yaml from the binary itself so that the daemon reads no file
# at run time: written at build time as a C array (mrad_openapi_yaml, with
# mrad_openapi_yaml_len) by od and sed, which every build host has.
MRAD_OPENAPI_C := $(BUILD)/gen/server/openapi-yaml.c
MRAD_OPENAPI_O := $(MRAD_OPENAPI_C:.c=.o)

$(MRAD_OPENAPI_C): protocol/openapi.yaml server/module.mk
	@mkdir -p $(@D)
	{ printf '/* Generated from %s by server/module.mk: do not edit. */\n' $<; \
	  printf '#include <stddef.h>\n\nconst unsigned char mrad_openapi_yaml[] = {\n'; \
	  od -An -v -tx1 $< | sed -e 's/ *\([0-9a-f][0-9a-f]\)/0x\1,/g'; \
	  printf '};\nconst size_t mrad_openapi_yaml_len = sizeof mrad_openapi_yaml;\n'; \
	} > $@.tmp && mv $@.tmp $@

$(MRAD_OPENAPI_O): $(MRAD_OPENAPI_C)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

MRAD_OBJS := $(MRAD_SRCS:%.c=$(BUILD)/%.o) $(MRAD_OPENAPI_O)

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
MRAD_TEST_OBJS := $(MRAD_SRCS:%.c=$(BUILD)/testhooks/%.o) $(MRAD_OPENAPI_O)

$(BUILD)/testhooks/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -DMRAD_TEST_HOOKS $(CFLAGS) -c $< -o $@

$(MRAD_TEST_BIN): $(MRAD_TEST_OBJS) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) -lmicrohttpd -luv $(LDLIBS)

tests-build: $(MRAD_TEST_BIN)
endif

# Whatever compiles the daemon's sources itself (the HTTP fuzzer in
# tests/module.mk) compiles the generated one with them.
MRAD_SRCS += $(MRAD_OPENAPI_C)
