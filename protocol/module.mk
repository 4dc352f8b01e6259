# protocol/module.mk - the wire codec (libproto.a): msgpack and JSON.

PROTO_LIB  := $(BUILD)/libproto.a
PROTO_SRCS := $(wildcard protocol/*.c)
PROTO_OBJS := $(PROTO_SRCS:%.c=$(BUILD)/%.o)
PROTO_LDLIBS := -lmsgpackc

$(PROTO_LIB): $(PROTO_OBJS)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

LIBS += $(PROTO_LIB)
