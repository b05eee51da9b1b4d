# Fuzzing.  "make fuzz" builds the libFuzzer targets with clang (never part
# of "all" or "check": the default compiler is gcc); the same target files,
# built with -DFUZZ_STANDALONE and a small main(), replay the seed corpora and
# every saved crash in tests/fuzz/regressions in each "make check".
FUZZ_CC = clang
FUZZ_CFLAGS = -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer -g -O1 -std=gnu11 -Wall -Wextra -Wno-unused-parameter \
	-Wno-missing-field-initializers -pthread
FUZZ_CPPFLAGS = $(DEFS) -I$(top_builddir) $(AM_CPPFLAGS) -I$(top_srcdir)/tests/fuzz
# Sources are taken from the libraries' own lists (the .c files only).
FUZZ_C_OF = for f in $$list; do case $$f in *.c) printf '%s ' "$(top_srcdir)/$$f";; esac; done
FUZZ_DEPS = $(libvhd_a_SOURCES) $(libnbdcodec_a_SOURCES) tests/fuzz/fuzz-common.h \
	tests/fuzz/fuzz-vhd-open.c tests/fuzz/vhd-parent.c tests/fuzz/vhd-parent.h \
	tests/fuzz/fuzz-nbd-codec.c
# fuzz-nbd-server: the server's files but main.c, listen.c, notify.c and
# workers.c (fake-workers.c stands in), and the libuv stream calls replaced
# at link time by fake-uv.c.
FUZZ_SERVER_HARNESS = tests/fuzz/fuzz-nbd-server.c tests/fuzz/fake-uv.c tests/fuzz/fake-uv.h \
	tests/fuzz/fake-workers.c tests/fuzz/fake-workers.h tests/fuzz/vhd-parent.c \
	tests/fuzz/vhd-parent.h
FUZZ_SERVER_NOT = */main.c|*/listen.c|*/notify.c|*/workers.c|*/reload.c
FUZZ_UV_WRAP = -Wl,--wrap=uv_pipe_open -Wl,--wrap=uv_read_start -Wl,--wrap=uv_read_stop \
	-Wl,--wrap=uv_write -Wl,--wrap=uv_try_write -Wl,--wrap=uv_shutdown

tests/fuzz/fuzz-vhd-open: $(FUZZ_DEPS)
	@$(MKDIR_P) tests/fuzz
	$(AM_V_GEN)list='$(libvhd_a_SOURCES) tests/fuzz/fuzz-vhd-open.c tests/fuzz/vhd-parent.c'; \
	  $(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_CPPFLAGS) $(UUID_CFLAGS) -o $@ `$(FUZZ_C_OF)` $(UUID_LIBS)
tests/fuzz/fuzz-nbd-codec: $(FUZZ_DEPS)
	@$(MKDIR_P) tests/fuzz
	$(AM_V_GEN)list='$(libnbdcodec_a_SOURCES) tests/fuzz/fuzz-nbd-codec.c'; \
	  $(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_CPPFLAGS) -o $@ `$(FUZZ_C_OF)`
tests/fuzz/fuzz-nbd-server: $(FUZZ_DEPS) $(vhdnbd_SOURCES) $(libnet_a_SOURCES) \
	$(libcommon_a_SOURCES) $(FUZZ_SERVER_HARNESS)
	@$(MKDIR_P) tests/fuzz
	$(AM_V_GEN)list='$(libvhd_a_SOURCES) $(libnbdcodec_a_SOURCES) $(libnet_a_SOURCES) \
	  $(libcommon_a_SOURCES) $(FUZZ_SERVER_HARNESS)'; srv=''; \
	  for f in $(vhdnbd_SOURCES); do case $$f in $(FUZZ_SERVER_NOT)) ;; *.c) srv="$$srv $$f";; esac; done; \
	  list="$$list $$srv"; \
	  $(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_CPPFLAGS) -I$(top_srcdir)/src/server $(UV_CFLAGS) \
	    -DVHDNBD_STATE_DIR='"$(localstatedir)/lib/vhdnbd"' \
	    $(GNUTLS_CFLAGS) $(UUID_CFLAGS) -o $@ `$(FUZZ_C_OF)` $(FUZZ_UV_WRAP) $(UV_LIBS) \
	    $(GNUTLS_LIBS) $(UUID_LIBS)
fuzz: tests/fuzz/fuzz-vhd-open tests/fuzz/fuzz-nbd-codec tests/fuzz/fuzz-nbd-server
.PHONY: fuzz

# Regenerates the named seeds of the corpora (committed; run after changing the seeds).
tests/fuzz/make-vhd-seeds: $(top_srcdir)/tests/fuzz/make-vhd-seeds.c \
	$(top_srcdir)/tests/fuzz/vhd-parent.c libvhd.a libcommon.a
	@$(MKDIR_P) tests/fuzz
	$(AM_V_CCLD)$(CC) $(AM_CFLAGS) $(CFLAGS) $(FUZZ_CPPFLAGS) $(UUID_CFLAGS) -o $@ \
	  $(top_srcdir)/tests/fuzz/make-vhd-seeds.c $(top_srcdir)/tests/fuzz/vhd-parent.c \
	  libvhd.a libcommon.a $(UUID_LIBS) $(AM_LDFLAGS)
fuzz-seeds: tests/fuzz/make-vhd-seeds
	./tests/fuzz/make-vhd-seeds $(top_srcdir)/tests/fuzz/corpus-vhd
	python3 $(top_srcdir)/tests/fuzz/make-nbd-seeds.py $(top_srcdir)/tests/fuzz/corpus-nbd
	python3 $(top_srcdir)/tests/fuzz/make-server-seeds.py $(top_srcdir)/tests/fuzz/corpus-server
.PHONY: fuzz-seeds

CLEANFILES += tests/fuzz/fuzz-vhd-open tests/fuzz/fuzz-nbd-codec tests/fuzz/fuzz-nbd-server \
	tests/fuzz/make-vhd-seeds

check_PROGRAMS += fuzz-vhd-open-replay fuzz-nbd-codec-replay fuzz-nbd-server-replay
FUZZ_REPLAY_SOURCES = tests/fuzz/standalone.c tests/fuzz/fuzz-common.h
fuzz_vhd_open_replay_SOURCES = tests/fuzz/fuzz-vhd-open.c tests/fuzz/vhd-parent.c \
	tests/fuzz/vhd-parent.h $(FUZZ_REPLAY_SOURCES)
fuzz_vhd_open_replay_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_STANDALONE
fuzz_vhd_open_replay_CFLAGS = $(AM_CFLAGS) $(UUID_CFLAGS)
fuzz_vhd_open_replay_LDADD = libvhd.a libcommon.a $(UUID_LIBS)
fuzz_nbd_codec_replay_SOURCES = tests/fuzz/fuzz-nbd-codec.c $(FUZZ_REPLAY_SOURCES)
fuzz_nbd_codec_replay_CPPFLAGS = $(AM_CPPFLAGS) -DFUZZ_STANDALONE
fuzz_nbd_codec_replay_LDADD = libnbdcodec.a libcommon.a
# The server files are listed here too (automake wants them literally).
fuzz_nbd_server_replay_SOURCES = $(FUZZ_SERVER_HARNESS) $(FUZZ_REPLAY_SOURCES) \
	src/server/config.c src/server/exports.c src/server/connection.c \
	src/server/conn-internal.h src/server/conn-input.c src/server/conn-tls.c \
	src/server/conn-output.c \
	src/server/handshake.c src/server/transmission.c src/server/ops.c src/server/queue.c \
	src/server/lanes.c \
	src/server/bufpool.c src/server/splice.c src/server/guard.c src/server/metrics.c \
	src/server/overlay.c src/server/loops.c
fuzz_nbd_server_replay_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/src/server -DFUZZ_STANDALONE \
	-DVHDNBD_STATE_DIR='"$(localstatedir)/lib/vhdnbd"'
fuzz_nbd_server_replay_CFLAGS = $(AM_CFLAGS) $(UV_CFLAGS) $(GNUTLS_CFLAGS) $(UUID_CFLAGS)
fuzz_nbd_server_replay_LDFLAGS = $(AM_LDFLAGS) $(FUZZ_UV_WRAP)
fuzz_nbd_server_replay_LDADD = libnbdcodec.a libvhd.a libnet.a libcommon.a $(UV_LIBS) \
	$(UUID_LIBS) $(GNUTLS_LIBS)

TESTS += tests/fuzz/test-fuzz-replay.sh tests/fuzz/test-fuzz-smoke.sh
EXTRA_DIST += \
	tests/fuzz/README.md \
	tests/fuzz/test-fuzz-replay.sh \
	tests/fuzz/test-fuzz-smoke.sh \
	tests/fuzz/make-vhd-seeds.c \
	tests/fuzz/make-nbd-seeds.py \
	tests/fuzz/make-server-seeds.py \
	tests/fuzz/corpus-vhd \
	tests/fuzz/corpus-nbd \
	tests/fuzz/corpus-server \
	tests/fuzz/regressions
