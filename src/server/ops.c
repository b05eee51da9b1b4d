/* ops.c: the work done on the image; the only server file that does image
 * I/O.  Runs on worker threads, except ops_read_now and ops_write_now (loop
 * thread, never wait).  Touches nothing of the connection but the request itself. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "request.h"
#include "server.h"

/* A structured READ splits into at most this many chunks; holes smaller than
 * READ_HOLE_MIN are sent as data (a chunk header costs more than it saves). */
#define READ_MAX_CHUNKS 64
#define READ_HOLE_MIN 4096u
/* BLOCK_STATUS answers with at most this many descriptors; the client asks
 * again from where the answer ended. */
#define BLOCK_STATUS_MAX_EXTENTS 1024

/* An engine failure: always carries a message, so it is logged (a client's
 * own mistakes are caught earlier and only logged when debugging). */
static void fail(struct request *req, int r, const struct vhd_err *err) {
  req->error = nbd_errno_to_nbd(r);
  req->errmsg = strdup(err && err->msg[0] ? err->msg : strerror(r < 0 ? -r : r));
}

/* A failed WRITE, WRITE_ZEROES, TRIM or FLUSH: once the image latched a
 * write error, every such request fails with EIO until restart, and the
 * reply path logs the cause once rather than each request. */
static void fail_write(struct request *req, int r, const struct vhd_err *err) {
  fail(req, r, err);
  req->image_failed = vhd_write_error(req->exp->vhd, NULL) != 0;
}

struct chunk_list {
  struct request *req;
  size_t cap;
};

/* The engine may leave the bytes of holes unset (VHD_READ_SKIP_ZERO); a
 * hole sent as data must be zeroed here. */
static void zero_fill(struct request *req, uint64_t off, uint64_t len) {
  memset(req->data + (off - req->io_off), 0, len);
}

static int add_chunk(struct chunk_list *cl, uint64_t off, uint64_t len, bool hole) {
  struct request *req = cl->req;
  if (len == 0)
    return 0;
  if (hole && len < READ_HOLE_MIN) {
    zero_fill(req, off, len);
    hole = false;
  }
  if (req->n_chunks > 0) {
    struct read_chunk *last = &req->chunks[req->n_chunks - 1];
    if (last->hole == hole || req->n_chunks == READ_MAX_CHUNKS) {
      /* Merge, or once out of chunks send the rest as data. */
      if (last->hole != hole) {
        if (last->hole)
          zero_fill(req, last->off, last->len);
        else
          zero_fill(req, off, len);
        last->hole = false;
      }
      last->len += (uint32_t)len;
      return 0;
    }
  }
  if (req->n_chunks == cl->cap)
    return -ENOMEM; /* cannot happen: cap = READ_MAX_CHUNKS */
  req->chunks[req->n_chunks++] = (struct read_chunk){.off = off, .len = (uint32_t)len, .hole = hole};
  return 0;
}

static int read_map_cb(void *opaque, const struct vhd_extent *ext) {
  struct chunk_list *cl = opaque;
  bool hole = (ext->flags & VHD_MAP_ZERO) && !(ext->flags & VHD_MAP_DATA);
  return add_chunk(cl, ext->offset, ext->length, hole);
}

/* A READ whose range is one run of one file's data goes into a pipe by
 * reference (splice.h) rather than into req->data.  Returns true when it
 * did; anything in the way (holes, no pipe free, a range the pipe cannot
 * hold, an error) leaves the request to the copying read, which reports
 * errors properly.  Where the range starts inside a page and a pipe cannot
 * hold all the pages it touches (1 MiB in a QEMU-made dynamic image,
 * whose block data starts 512 bytes into a page), the bytes up to the
 * first page boundary are read into data[] and sent first (splice_head). */
static bool read_spliced(struct request *req) {
  struct vhd_err err = {{0}};
  int fd;
  uint64_t foff;
  if (vhd_read_extent(req->exp->vhd, req->io_off, req->io_len, &fd, &foff, &err) != 1)
    return false;
  size_t head;
  if (!splice_plan(foff, req->io_len, REQUEST_SPLICE_HEAD_MAX, &head) ||
      !splice_pipe_get(&req->pipe))
    return false;
  if ((head && splice_read_full(fd, req->data, head, (int64_t)foff) < 0) ||
      splice_fill(&req->pipe, fd, foff + head, req->io_len - head) < 0) {
    splice_pipe_put(&req->pipe, false);
    return false;
  }
  req->splice_head = (uint32_t)head;
  req->spliced = true;
  req->n_chunks = 0;
  return true;
}

/* A READ in one pass over the image: data and, for a structured reply, where
 * the holes are.  With VHD_READ_NOWAIT returns -EAGAIN (and nothing else)
 * when it would wait; the request is then as it was before. */
static int op_read(struct request *req, unsigned flags) {
  vhd_t *vhd = req->exp->vhd;
  struct vhd_err err = {{0}};
  uint64_t off = req->io_off;
  uint32_t len = req->io_len;
  if (req->may_splice && !(flags & VHD_READ_NOWAIT) && read_spliced(req))
    return 0;
  bool chunked = req->structured && !(req->r.flags & NBD_CMD_FLAG_DF);
  if (chunked && !req->chunks)
    req->chunks = calloc(READ_MAX_CHUNKS, sizeof *req->chunks);
  req->n_chunks = 0;
  int r;
  if (chunked && req->chunks) {
    struct chunk_list cl = {.req = req, .cap = READ_MAX_CHUNKS};
    r = vhd_read_map(vhd, req->data, off, len, flags | VHD_READ_SKIP_ZERO, read_map_cb, &cl,
                     &err);
    if (r == 0) {
      uint64_t covered = 0;
      for (size_t i = 0; i < req->n_chunks; i++)
        covered += req->chunks[i].len;
      if (covered != len) {
        req->n_chunks = 0;
        req->error = NBD_EIO;
        req->why = "read: the image map did not cover the request";
        return 0;
      }
    }
  } else {
    r = vhd_read_map(vhd, req->data, off, len, flags, NULL, NULL, &err);
  }
  if (r == -EAGAIN && (flags & VHD_READ_NOWAIT)) {
    req->n_chunks = 0;
    return -EAGAIN;
  }
  if (r < 0) {
    req->n_chunks = 0;
    fail(req, r, &err);
  }
  return 0;
}

int ops_read_now(struct request *req) {
  return op_read(req, VHD_READ_NOWAIT);
}

int ops_write_now(struct request *req) {
  struct vhd_err err = {{0}};
  int r = vhd_write(req->exp->vhd, req->data, req->r.offset, req->r.length, VHD_WRITE_NOWAIT,
                    &err);
  if (r == -EAGAIN)
    return -EAGAIN;
  if (r < 0)
    fail_write(req, r, &err);
  return 0;
}

/* The answer for one meta context, grown as descriptors come. */
struct extent_list {
  struct nbd_extent **ext;
  size_t *n;
  size_t max, cap;
  bool full; /* the answer ends here */
};

/* Both contexts' answers, built from one pass over the image map. */
struct status_ctx {
  uint64_t pos, end;
  struct extent_list alloc, depth;
};

size_t ops_overhead_max(const struct request *req) {
  size_t n = sizeof *req;
  if (req->r.type == NBD_CMD_BLOCK_STATUS) {
    size_t max = (req->r.flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BLOCK_STATUS_MAX_EXTENTS;
    size_t contexts = (size_t)req->want_alloc + (size_t)req->want_depth;
    n += contexts * (max * sizeof(struct nbd_extent) + NBD_CHUNK_BLOCK_STATUS_SIZE(max)) +
         sizeof(uv_buf_t);
  } else if (req->r.type == NBD_CMD_READ && req->structured) {
    n += READ_MAX_CHUNKS * (sizeof(struct read_chunk) + NBD_CHUNK_OFFSET_HOLE_SIZE +
                            2 * sizeof(uv_buf_t));
  } else {
    n += 2 * sizeof(uv_buf_t) + NBD_CHUNK_NONE_SIZE;
  }
  return n;
}

/* Adds a run to one context's answer, merged with the last descriptor when
 * the state is the same.  Returns -ENOMEM, or 0 (el->full once it is). */
static int extent_add(struct extent_list *el, uint64_t len, uint32_t state) {
  struct nbd_extent *ext = *el->ext;
  size_t n = *el->n;
  if (el->full)
    return 0;
  if (n > 0 && ext[n - 1].flags == state) {
    ext[n - 1].length += len;
    return 0;
  }
  if (n == el->max) {
    el->full = true;
    return 0;
  }
  if (n == el->cap) {
    /* Most answers are short: grow as needed rather than allocate the most. */
    size_t cap = el->cap ? MIN(el->cap * 2, el->max) : MIN(el->max, (size_t)16);
    struct nbd_extent *e = realloc(ext, cap * sizeof *e);
    if (!e)
      return -ENOMEM;
    *el->ext = e;
    el->cap = cap;
  }
  (*el->ext)[(*el->n)++] = (struct nbd_extent){.length = len, .flags = state};
  return 0;
}

static int status_map_cb(void *opaque, const struct vhd_extent *ext) {
  struct status_ctx *sc = opaque;
  uint64_t start = MAX(ext->offset, sc->pos);
  uint64_t end = MIN(ext->offset + ext->length, sc->end);
  if (end <= start)
    return 0;
  if (start != sc->pos)
    return -EIO; /* the engine promised contiguous runs */
  sc->pos = end;
  /* DATA -> 0 (allocated), ZERO alone -> a sparse hole, both -> allocated zeros. */
  uint32_t state = 0;
  if (ext->flags & VHD_MAP_ZERO)
    state = (ext->flags & VHD_MAP_DATA) ? NBD_STATE_ZERO : NBD_STATE_HOLE | NBD_STATE_ZERO;
  int r = extent_add(&sc->alloc, end - start, state);
  /* The engine counts levels from 0 (this image) and says -1 for none;
   * qemu:allocation-depth counts from 1 and says 0 for none. */
  uint32_t depth = ext->depth < 0 ? 0 : (uint32_t)ext->depth + 1;
  if (r == 0)
    r = extent_add(&sc->depth, end - start, depth);
  if (r < 0)
    return r;
  return sc->alloc.full && sc->depth.full ? 1 : 0;
}

static void op_block_status(struct request *req) {
  struct vhd_err err = {{0}};
  size_t max = (req->r.flags & NBD_CMD_FLAG_REQ_ONE) ? 1 : BLOCK_STATUS_MAX_EXTENTS;
  /* A context nobody asked for counts as full from the start. */
  struct status_ctx sc = {
      .pos = req->r.offset,
      .end = req->r.offset + req->r.length,
      .alloc = {.ext = &req->ext, .n = &req->n_ext, .max = max, .full = !req->want_alloc},
      .depth = {.ext = &req->depth_ext, .n = &req->n_depth_ext, .max = max,
                .full = !req->want_depth},
  };
  int r = vhd_map(req->exp->vhd, req->r.offset, req->r.length, status_map_cb, &sc, &err);
  if (r < 0) {
    fail(req, r, &err);
    return;
  }
  if ((req->want_alloc && req->n_ext == 0) || (req->want_depth && req->n_depth_ext == 0)) {
    req->error = NBD_EIO;
    req->why = "block status: the image map covered nothing";
  }
}

static void op_write_zeroes(struct request *req) {
  struct vhd_err err = {{0}};
  vhd_t *vhd = req->exp->vhd;
  uint16_t f = req->r.flags;
  /* NO_HOLE means writing zeros for real: never faster than a WRITE. */
  if ((f & NBD_CMD_FLAG_FAST_ZERO) &&
      ((f & NBD_CMD_FLAG_NO_HOLE) || !vhd_zero_is_fast(vhd, req->r.offset, req->r.length))) {
    req->error = NBD_ENOTSUP;
    req->why = "zeroing this range is not faster than writing";
    return;
  }
  unsigned flags = (f & NBD_CMD_FLAG_FUA ? VHD_FUA : 0) |
                   (f & NBD_CMD_FLAG_NO_HOLE ? VHD_NO_HOLE : VHD_MAY_TRIM);
  int r = vhd_write_zeroes(vhd, req->r.offset, req->r.length, flags, &err);
  if (r < 0)
    fail_write(req, r, &err);
}

/* A WRITE whose payload waits in a pipe: spliced into the file where the
 * engine can take it so (whole sectors, or in place), else read out of
 * the pipe and written as any other. */
static int op_write_piped(struct request *req, unsigned fua, struct vhd_err *err) {
  vhd_t *vhd = req->exp->vhd;
  uint64_t off = req->r.offset;
  size_t len = (size_t)req->r.length;
  size_t head = req->payload_head;
  int r = vhd_write_splice(vhd, req->data, head, req->pipe.rd, off, len, fua, err);
  if (r <= 0) {
    /* Failed, the pipe may hold bytes: request_free closes it. */
    if (r == 0) {
      req->write_spliced = true;
      splice_pipe_put(&req->pipe, true);
    }
    return r;
  }
  r = splice_read_full(req->pipe.rd, req->data + head, len - head, -1);
  if (r < 0) {
    snprintf(err->msg, sizeof err->msg, "reading a WRITE payload back from its pipe: %s",
             strerror(-r));
    return r;
  }
  splice_pipe_put(&req->pipe, true);
  return vhd_write(vhd, req->data, off, len, fua, err);
}

void ops_run(struct request *req) {
  struct vhd_err err = {{0}};
  vhd_t *vhd = req->exp->vhd;
  unsigned fua = req->r.flags & NBD_CMD_FLAG_FUA ? VHD_FUA : 0;
  int r = 0;
  switch (req->r.type) {
  case NBD_CMD_READ:
    op_read(req, 0);
    return;
  case NBD_CMD_WRITE:
    r = req->payload_piped ? op_write_piped(req, fua, &err)
                           : vhd_write(vhd, req->data, req->r.offset, req->r.length, fua, &err);
    break;
  case NBD_CMD_FLUSH:
    r = vhd_flush(vhd, &err);
    break;
  case NBD_CMD_TRIM:
    r = vhd_trim(vhd, req->r.offset, req->r.length, fua, &err);
    break;
  case NBD_CMD_WRITE_ZEROES:
    op_write_zeroes(req);
    return;
  case NBD_CMD_BLOCK_STATUS:
    op_block_status(req);
    return;
  default:
    req->error = NBD_EINVAL;
    req->why = "unexpected command";
    return;
  }
  if (r < 0)
    fail_write(req, r, &err);
}
