# server/module.mk - the daemon, bin/mrad.

MRAD_SRCS := $(wildcard server/*.c)
MRAD_OBJS := $(MRAD_SRCS:%.c=$(BUILD)/%.o)

ifneq ($(MRAD_SRCS),)
$(BIN)/mrad: $(MRAD_OBJS) $(PROTO_LIB) $(ATTN_LIB)
	@mkdir -p $(@D)
	$(CC) $(LDFLAGS) -o $@ $^ $(PROTO_LDLIBS) $(ATTN_LDLIBS) -lmicrohttpd -luv $(LDLIBS)
BINS += $(BIN)/mrad
endif
