# chatloop — see README.md. `make` builds build/chatloop; `make test`,
# `make asan`, `make run`, `make bench`, `make fuzz`.
CC       ?= cc
BUILD    ?= build
SAN      ?=
OPTFLAGS ?= -O2 -g
PKGS     := libuv libcurl libpq jansson

ifeq ($(SAN),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPTFLAGS := -O1 -g
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter -Werror
CFLAGS  += -std=c11 -D_GNU_SOURCE $(OPTFLAGS) $(SANFLAGS) $(WARN) -MMD -MP \
           -Iinclude -I/usr/share/include/llhttp $(PKG_CFLAGS)
LDLIBS  += $(PKG_LIBS) -lwslay -lmbedtls -lmbedx509 -lmbedcrypto -lm
LDFLAGS += $(SANFLAGS)

include third_party/llhttp.mk

LIB_SRCS  := $(sort $(wildcard src/base/*.c src/net/*.c src/http/*.c src/ws/*.c src/llm/*.c src/api/*.c src/auth/*.c src/db/*.c src/chat/*.c))
# The browser client's files and the OpenAPI document (src/http/assets/, each
# served as /<name> by src/http/static.c) become byte arrays in one
# generated C source: scripts/embed.sh.
ASSETS    := $(sort $(wildcard src/http/assets/*.html src/http/assets/*.js src/http/assets/*.css src/http/assets/*.json))
ASSET_OBJ := $(BUILD)/gen/assets.o
LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(LLHTTP_OBJS) $(ASSET_OBJ)
MAIN_OBJ  := $(BUILD)/src/main.o
MOCK_SRCS := $(sort $(wildcard src/mock/*.c))
MOCK_OBJS := $(MOCK_SRCS:%.c=$(BUILD)/%.o)
# chatbench: the load generator (src/bench/); its test links all but main.
BENCH_SRCS := $(sort $(wildcard src/bench/*.c))
BENCH_OBJS := $(BENCH_SRCS:%.c=$(BUILD)/%.o)
BENCH_LIB_OBJS := $(filter-out $(BUILD)/src/bench/main.o,$(BENCH_OBJS))
UNIT_SRCS := $(sort $(wildcard test/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:test/unit/%.c=$(BUILD)/test/%)

.PHONY: all test asan run bench fuzz clean deps deps-run unit docs
all: $(BUILD)/chatloop $(if $(MOCK_SRCS),$(BUILD)/chatloop-mock) $(BUILD)/chatbench $(UNIT_BINS)

$(BUILD) $(BUILD)/third_party $(BUILD)/test:
	@mkdir -p $@

$(BUILD)/%.o: %.c | $(BUILD)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The directory is a prerequisite too: adding or removing a file regenerates.
$(BUILD)/gen/assets.c build-fuzz/gen/assets.c: scripts/embed.sh $(ASSETS) src/http/assets
	@mkdir -p $(dir $@)
	sh scripts/embed.sh $@ $(ASSETS)

$(ASSET_OBJ): $(BUILD)/gen/assets.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/chatloop: $(MAIN_OBJ) $(LIB_OBJS)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# chatloop-mock: the OpenAI-compatible fake upstream, on the same HTTP core.
$(BUILD)/chatloop-mock: $(MOCK_OBJS) $(LIB_OBJS)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# chatbench: the load generator, on libuv, llhttp and wslay like the server.
$(BUILD)/chatbench: $(BENCH_OBJS) $(LIB_OBJS)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/test/test_bench: $(BUILD)/test/unit/test_bench.o $(BENCH_LIB_OBJS) $(LIB_OBJS) | $(BUILD)/test
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/test/%: $(BUILD)/test/unit/%.o $(LIB_OBJS) | $(BUILD)/test
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

# `make run` installs only what serving needs; the tests' packages (Node.js,
# npm modules, Chromium) come with `make test` (scripts/deps.sh).
deps:
	@bash scripts/deps.sh test

deps-run:
	@bash scripts/deps.sh run

unit: $(UNIT_BINS)

# Swagger UI for /docs, into var/docs (docs_dir's default): scripts/docs-assets.sh.
docs:
	@bash scripts/docs-assets.sh

# Swagger UI comes after deps (it needs npm), for the /docs browser test.
test: deps
	@bash scripts/docs-assets.sh
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) bash test/run.sh

asan: deps
	@bash scripts/docs-assets.sh
	@$(MAKE) --no-print-directory BUILD=build-asan SAN=1 all
	@BUILD=build-asan bash test/run.sh

run: deps-run
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) bash scripts/run.sh

# libFuzzer (clang): one target per parser that reads the network.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := $(patsubst test/fuzz/%.c,build-fuzz/%,$(wildcard test/fuzz/fuzz_*.c))
build-fuzz/%: test/fuzz/%.c $(LIB_SRCS) build-fuzz/gen/assets.c
	@mkdir -p build-fuzz
	clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
	  -I/usr/share/include/llhttp $(PKG_CFLAGS) $< $(LIB_SRCS) $(LLHTTP_SRCS) build-fuzz/gen/assets.c -o $@ $(LDLIBS)

fuzz: deps $(FUZZ_TARGETS)
	@for t in $(FUZZ_TARGETS); do n=$$(basename $$t | sed 's/^fuzz_//'); \
	  mkdir -p build-fuzz/corpus-$$n; \
	  echo "== $$t ($(FUZZ_SECONDS)s)"; \
	  $$t -max_total_time=$(FUZZ_SECONDS) -max_len=8192 build-fuzz/corpus-$$n test/fuzz/corpus/$$n || exit 1; \
	done

bench: deps
	@$(MAKE) --no-print-directory all
	@bash scripts/bench.sh

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
