# Build glue for llhttp: Debian's node-llhttp ships the generated C sources
# under /usr/share/llhttp and the header under /usr/share/include/llhttp. We
# compile them into our binaries; no llhttp code is kept in this repository.
LLHTTP_SRC_DIR ?= /usr/share/llhttp
LLHTTP_INC_DIR ?= /usr/share/include/llhttp
LLHTTP_SRCS := $(LLHTTP_SRC_DIR)/llhttp.c $(LLHTTP_SRC_DIR)/api.c $(LLHTTP_SRC_DIR)/http.c
LLHTTP_CFLAGS := -I$(LLHTTP_INC_DIR)

# Generated code: compiled with its own, quieter flags (still optimised).
$(BUILD)/third_party/llhttp_%.o: $(LLHTTP_SRC_DIR)/%.c | $(BUILD)/third_party
	$(CC) $(OPTFLAGS) $(SANFLAGS) -std=c11 -w $(LLHTTP_CFLAGS) -c $< -o $@

LLHTTP_OBJS := $(BUILD)/third_party/llhttp_llhttp.o $(BUILD)/third_party/llhttp_api.o $(BUILD)/third_party/llhttp_http.o
