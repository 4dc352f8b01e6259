# clients/module.mk - bin/mractl (offline runner and server-facing
# subcommands), the C client library and bin/mra-load.

MRACTL_SRCS := $(wildcard clients/mractl/*.c)
MRACTL_OBJS := $(MRACTL_SRCS:%.c=$(BUILD)/%.o)

ifneq ($(MRACTL_SRCS),)
$(BIN)/mractl: $(MRACTL_OBJS) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) $(LDLIBS)
BINS += $(BIN)/mractl
endif
