/* fake-uv.c: the libuv stream calls of the server, answered without a socket
 * (see fake-uv.h).  Each __wrap_uv_X replaces uv_X at link time. */
#include "config.h"

#include "fake-uv.h"

#include <stdlib.h>
#include <string.h>

int __wrap_uv_pipe_open(uv_pipe_t *pipe, uv_file fd);
int __wrap_uv_read_start(uv_stream_t *stream, uv_alloc_cb alloc_cb, uv_read_cb read_cb);
int __wrap_uv_read_stop(uv_stream_t *stream);
int __wrap_uv_write(uv_write_t *req, uv_stream_t *handle, const uv_buf_t bufs[],
                    unsigned int nbufs, uv_write_cb cb);
int __wrap_uv_try_write(uv_stream_t *handle, const uv_buf_t bufs[], unsigned int nbufs);
int __wrap_uv_shutdown(uv_shutdown_t *req, uv_stream_t *handle, uv_shutdown_cb cb);

struct pending_write {
  struct pending_write *next;
  uv_write_t *req;
  uv_write_cb cb;
  unsigned nbufs;
  uv_buf_t bufs[]; /* libuv copies the array too; the data it points at must live on */
};

static struct {
  struct fuzz_rng *rng;
  uv_stream_t *in;
  uv_alloc_cb alloc_cb;
  uv_read_cb read_cb;
  bool reading;
  struct pending_write *head, *tail;
  size_t n_writes;
  uv_shutdown_t *shutdown;
  uv_shutdown_cb shutdown_cb;
  bool shut; /* uv_shutdown was called: later writes fail as after shutdown(2) */
  bool broken; /* a write failed with EPIPE: the peer is gone, every later one fails */
  uint64_t out;
  uint8_t head_out[64];
  uint8_t sum; /* of every byte written, so that reading them is not optimised away */
} fk;

void fake_uv_reset(struct fuzz_rng *rng) {
  while (fk.head) {
    struct pending_write *p = fk.head;
    fk.head = p->next;
    free(p);
  }
  memset(&fk, 0, sizeof fk);
  fk.rng = rng;
}

/* The bytes leave: every one is read, as the kernel would copy it. */
FUZZ_NO_COVERAGE
static void emit(const uint8_t *p, size_t len) {
  for (size_t i = 0; i < len; i++) {
    if (fk.out + i < sizeof fk.head_out)
      fk.head_out[fk.out + i] = p[i];
    fk.sum ^= p[i];
  }
  fk.out += len;
}

/* Emits up to limit bytes of bufs; returns how many. */
static size_t emit_bufs(const uv_buf_t *bufs, unsigned nbufs, size_t limit) {
  size_t done = 0;
  for (unsigned i = 0; i < nbufs && done < limit; i++) {
    size_t n = bufs[i].len < limit - done ? bufs[i].len : limit - done;
    emit((const uint8_t *)bufs[i].base, n);
    done += n;
  }
  return done;
}

int __wrap_uv_pipe_open(uv_pipe_t *pipe, uv_file fd) {
  (void)pipe;
  (void)fd;
  return 0;
}

int __wrap_uv_read_start(uv_stream_t *stream, uv_alloc_cb alloc_cb, uv_read_cb read_cb) {
  if (fk.reading)
    return UV_EALREADY;
  if (uv_is_closing((uv_handle_t *)stream))
    return UV_EINVAL;
  fk.in = stream;
  fk.alloc_cb = alloc_cb;
  fk.read_cb = read_cb;
  fk.reading = true;
  return 0;
}

int __wrap_uv_read_stop(uv_stream_t *stream) {
  (void)stream;
  fk.reading = false;
  return 0;
}

int __wrap_uv_write(uv_write_t *req, uv_stream_t *handle, const uv_buf_t bufs[],
                    unsigned int nbufs, uv_write_cb cb) {
  if (uv_is_closing((uv_handle_t *)handle))
    return UV_EBADF;
  if (fk.shut)
    return UV_EPIPE;
  struct pending_write *p = malloc(sizeof *p + nbufs * sizeof *bufs);
  if (!p)
    return UV_ENOMEM;
  p->next = NULL;
  p->req = req;
  p->cb = cb;
  p->nbufs = nbufs;
  memcpy(p->bufs, bufs, nbufs * sizeof *bufs);
  req->handle = handle;
  req->cb = cb;
  if (fk.tail)
    fk.tail->next = p;
  else
    fk.head = p;
  fk.tail = p;
  fk.n_writes++;
  return 0;
}

int __wrap_uv_try_write(uv_stream_t *handle, const uv_buf_t bufs[], unsigned int nbufs) {
  if (uv_is_closing((uv_handle_t *)handle))
    return UV_EBADF;
  if (fk.shut)
    return UV_EPIPE;
  if (fk.head)
    return UV_EAGAIN; /* libuv: never ahead of queued writes */
  if (fk.broken || fuzz_rng_below(fk.rng, 64) == 0) {
    fk.broken = true; /* the peer reset the connection */
    return UV_EPIPE;
  }
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  /* Mostly the socket takes everything; sometimes part, sometimes nothing. */
  switch (fuzz_rng_below(fk.rng, 8)) {
  case 0:
    return UV_EAGAIN;
  case 1:
    if (total > 1)
      total = 1 + (size_t)fuzz_rng_below(fk.rng, total - 1);
    break;
  default:
    break;
  }
  if (total == 0)
    return UV_EAGAIN;
  return (int)emit_bufs(bufs, nbufs, total);
}

int __wrap_uv_shutdown(uv_shutdown_t *req, uv_stream_t *handle, uv_shutdown_cb cb) {
  if (uv_is_closing((uv_handle_t *)handle))
    return UV_EINVAL;
  if (fk.shutdown || fk.shut)
    return UV_ENOTCONN;
  req->handle = handle;
  req->cb = cb;
  fk.shutdown = req;
  fk.shutdown_cb = cb;
  fk.shut = true;
  return 0;
}

bool fake_uv_reading(void) { return fk.reading && fk.in && !uv_is_closing((uv_handle_t *)fk.in); }

size_t fake_uv_deliver(const uint8_t *data, size_t len) {
  uv_buf_t buf = uv_buf_init(NULL, 0);
  fk.alloc_cb((uv_handle_t *)fk.in, 65536, &buf);
  if (!buf.base || buf.len == 0) {
    fk.read_cb(fk.in, UV_ENOBUFS, &buf);
    return 0;
  }
  size_t n = len < buf.len ? len : buf.len;
  memcpy(buf.base, data, n);
  fk.read_cb(fk.in, (ssize_t)n, &buf);
  return n;
}

void fake_uv_deliver_end(int status) {
  uv_buf_t buf = uv_buf_init(NULL, 0);
  fk.alloc_cb((uv_handle_t *)fk.in, 65536, &buf);
  if (status == UV_EOF)
    fk.reading = false;
  fk.read_cb(fk.in, status, &buf);
}

size_t fake_uv_pending_writes(void) { return fk.n_writes; }

bool fake_uv_shutdown_pending(void) { return fk.shutdown != NULL; }

static struct pending_write *pop_write(void) {
  struct pending_write *p = fk.head;
  fk.head = p->next;
  if (!fk.head)
    fk.tail = NULL;
  fk.n_writes--;
  return p;
}

void fake_uv_complete_write(void) {
  if (!fk.head)
    return;
  struct pending_write *p = pop_write();
  /* Now and then the peer is gone before the bytes could leave; a stream
   * being closed writes nothing more (libuv cancels what is queued). */
  int status = 0;
  if (uv_is_closing((uv_handle_t *)p->req->handle))
    status = UV_ECANCELED;
  else if (fk.broken || fuzz_rng_below(fk.rng, 64) == 0)
    status = UV_EPIPE;
  if (status == UV_EPIPE)
    fk.broken = true;
  if (status == 0)
    emit_bufs(p->bufs, p->nbufs, SIZE_MAX);
  uv_write_t *req = p->req;
  uv_write_cb cb = p->cb;
  free(p);
  cb(req, status);
}

void fake_uv_complete_shutdown(void) {
  if (!fk.shutdown || fk.head)
    return;
  uv_shutdown_t *req = fk.shutdown;
  fk.shutdown = NULL;
  fk.shutdown_cb(req, 0);
}

void fake_uv_cancel_if_closing(void) {
  if (fk.in && uv_is_closing((uv_handle_t *)fk.in))
    fk.reading = false;
  while (fk.head && uv_is_closing((uv_handle_t *)fk.head->req->handle)) {
    struct pending_write *p = pop_write();
    uv_write_t *req = p->req;
    uv_write_cb cb = p->cb;
    free(p);
    cb(req, UV_ECANCELED);
  }
  if (fk.shutdown && !fk.head && uv_is_closing((uv_handle_t *)fk.shutdown->handle)) {
    uv_shutdown_t *req = fk.shutdown;
    fk.shutdown = NULL;
    fk.shutdown_cb(req, UV_ECANCELED);
  }
}

uint64_t fake_uv_bytes_out(void) { return fk.out; }

const uint8_t *fake_uv_head_out(size_t *len) {
  *len = fk.out < sizeof fk.head_out ? (size_t)fk.out : sizeof fk.head_out;
  return fk.head_out;
}
