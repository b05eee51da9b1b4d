/* request.h: one NBD request in transmission, from its header to its reply.
 *
 * Created on the loop thread when the header arrives; runs (ops.c) on a worker
 * thread once its export's queue lets it; its reply is encoded and written on
 * the loop thread; freed when the write completes. */
#ifndef VHDNBD_REQUEST_H
#define VHDNBD_REQUEST_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "codec.h"
#include "queue.h"
#include "splice.h"
#include "workers.h"

struct connection;
struct export;

/* A piece of a structured READ reply. */
struct read_chunk {
  uint64_t off;
  uint32_t len;
  bool hole;
};

struct request {
  struct queue_item qi; /* first: the queue hands it back to us */
  struct connection *conn;
  struct export *exp;
  struct nbd_request r;
  struct work_item work;
  bool structured; /* the reply is structured (READ, BLOCK_STATUS) */
  uint64_t started_ns; /* uv_hrtime() when its header arrived */
  bool replied;        /* its whole reply was written (or failed to be) */

  uint8_t *data;      /* READ result or WRITE payload */
  size_t data_size;   /* bytes allocated at data */
  uint64_t accounted; /* bytes counted in conn->inflight_bytes */
  uint64_t payload_accounted; /* of those, WRITE payload (conn->write_ahead) */
  uint32_t payload_done; /* WRITE: payload bytes read so far */
  bool payload_piped;    /* WRITE: the payload waits in pipe, not in data,
                            but for its first payload_head bytes */
  uint32_t payload_head;
  bool write_spliced;    /* ...and went from there into the file */

  /* READ of one run of file data: may_splice is set by dispatch where the
   * worker may splice it; spliced, its data waits in pipe (not in data).
   * A WRITE's pipe holds its payload (payload_piped). */
  bool may_splice, spliced;
  struct splice_pipe pipe;
  uint32_t splice_head; /* bytes of data[] sent before the pipe's */
#define REQUEST_SPLICE_HEAD_MAX 65536u

  /* READ: the range being produced, all of it or, for a sliced READ, one
   * slice (SERVER_READ_SLICE) at a time. */
  uint64_t io_off;
  uint32_t io_len;
  bool sliced;
  bool streaming;     /* part of its reply was written */
  struct request *held_next; /* its reply waits for another's stream to end */

  /* Outcome, filled by the worker. */
  uint32_t error;     /* NBD error, 0 on success */
  const char *why;    /* static reason, or NULL */
  char *errmsg;       /* engine message (heap), or NULL; for the log only */
  bool image_failed;  /* a write-kind request failed on an image that now
                         refuses writes (vhd_write_error) */
  struct read_chunk *chunks;
  size_t n_chunks;
  /* BLOCK_STATUS: the contexts asked for, and an answer for each. */
  bool want_alloc, want_depth;
  struct nbd_extent *ext;       /* base:allocation */
  size_t n_ext;
  struct nbd_extent *depth_ext; /* qemu:allocation-depth */
  size_t n_depth_ext;

  /* A reply its worker wrote itself (conn_send_direct): may_direct is set
   * by dispatch for the commands whose reply is short, and for READs up
   * to SERVER_DIRECT_READ_MAX; the reply is direct[0..direct_len), then
   * for a READ its io_len bytes of data; direct_sent is how many of
   * them went out (0: none, the loop sends it as usual). */
  bool may_direct;
  bool answered; /* counted off conn->unanswered */
  uint8_t direct_len;
  size_t direct_sent;
  uint8_t direct[NBD_CHUNK_OFFSET_DATA_PREFIX]; /* the largest header sent so */

  /* Reply wire data. */
  uint8_t *reply;
  uv_buf_t *bufs;
  uint8_t simple[NBD_SIMPLE_REPLY_SIZE];
};

/* Worker thread: performs the request on the export's image. */
void ops_run(struct request *req);
/* Loop thread: performs a READ if it can without waiting (the data is in the
 * page cache, the image lock free); returns -EAGAIN, the request untouched,
 * otherwise. */
int ops_read_now(struct request *req);
/* Loop thread: the same for a plain WRITE (VHD_WRITE_NOWAIT): stored in
 * the page cache without waiting and without changing the image's
 * metadata, or -EAGAIN with nothing written.  A failure of the image is
 * the request's error, as on a worker. */
int ops_write_now(struct request *req);
/* The most the request's own bookkeeping and reply framing (not its data)
 * can take: counted against the budgets when its header arrives, so that
 * what a client may pipeline is bounded by memory, not only by count. */
size_t ops_overhead_max(const struct request *req);

#endif
