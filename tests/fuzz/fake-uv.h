/* fake-uv.h: the client end of fuzz-nbd-server's one connection, in place of
 * a socket.
 *
 * The target is linked with -Wl,--wrap for the libuv stream calls the server
 * makes (uv_pipe_open, uv_read_start, uv_read_stop, uv_write, uv_try_write,
 * uv_shutdown), so src/server/connection.c and conn-*.c run unchanged: its reads are
 * delivered from the fuzz input by the harness, its writes stay pending here
 * until the harness completes them.  Handles, timers and uv_close are the
 * real libuv on a real loop (the pipes never get a file descriptor).
 *
 * Like libuv, nothing completes inside the call that started it: a write or
 * shutdown finishes only when the harness says so, in a later step. */
#ifndef VHDNBD_FUZZ_FAKE_UV_H
#define VHDNBD_FUZZ_FAKE_UV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "fuzz-common.h"

/* The wrapped calls draw their choices from rng (uv_try_write writes all,
 * part or nothing) and forget everything of the previous connection. */
void fake_uv_reset(struct fuzz_rng *rng);

/* Whether the server is reading (uv_read_start without uv_read_stop). */
bool fake_uv_reading(void);
/* One read of at most len bytes of data, as libuv does it: the server's
 * alloc callback, then its read callback.  Returns the bytes it took. */
size_t fake_uv_deliver(const uint8_t *data, size_t len);
/* The input ends: status UV_EOF (the peer closed its side; reading stops
 * first, as in libuv) or an error such as UV_ECONNRESET. */
void fake_uv_deliver_end(int status);

/* Writes queued by uv_write and not yet completed, and whether a shutdown
 * waits for them. */
size_t fake_uv_pending_writes(void);
bool fake_uv_shutdown_pending(void);
/* Completes the oldest write: its bytes go out now (read, so that a buffer
 * freed too early is caught), then its callback runs with status 0; now and
 * then it fails with UV_EPIPE instead, as uv_try_write sometimes does. */
void fake_uv_complete_write(void);
/* Completes the shutdown, once every write before it is done. */
void fake_uv_complete_shutdown(void);
/* What libuv does for a stream being closed: its pending writes and
 * shutdown complete with UV_ECANCELED.  Call before uv_run processes the
 * close.  No-op unless one of the fake streams is closing. */
void fake_uv_cancel_if_closing(void);

/* Bytes the server has written so far, and the first of them (up to 64). */
uint64_t fake_uv_bytes_out(void);
const uint8_t *fake_uv_head_out(size_t *len);

#endif
