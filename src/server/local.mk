# vhdnbd, the server.
sbin_PROGRAMS += vhdnbd
vhdnbd_SOURCES = \
	src/server/server.h \
	src/server/main.c \
	src/server/config.c \
	src/server/check-config.c \
	src/server/exports.c \
	src/server/listen.c \
	src/server/connection.c src/server/conn-internal.h \
	src/server/conn-input.c \
	src/server/conn-tls.c \
	src/server/conn-output.c \
	src/server/handshake.c \
	src/server/transmission.c \
	src/server/request.h \
	src/server/ops.c \
	src/server/queue.c src/server/queue.h \
	src/server/lanes.c src/server/lanes.h \
	src/server/bufpool.c src/server/bufpool.h \
	src/server/splice.c src/server/splice.h \
	src/server/workers.c src/server/workers.h \
	src/server/guard.c \
	src/server/metrics.c src/server/metrics.h \
	src/server/notify.c \
	src/server/overlay.c \
	src/server/reload.c \
	src/server/loops.c src/server/loops.h
vhdnbd_CFLAGS = $(AM_CFLAGS) -DVHDNBD_STATE_DIR='"$(localstatedir)/lib/vhdnbd"' $(UV_CFLAGS) $(SYSTEMD_CFLAGS) $(GNUTLS_CFLAGS)
vhdnbd_LDADD = libnbdcodec.a libvhd.a libnet.a libcommon.a $(UV_LIBS) $(UUID_LIBS) $(SYSTEMD_LIBS) \
	$(GNUTLS_LIBS)
