/* rebase.c: vhd_rebase, a differencing disk pointed at another parent.
 *
 * Safe mode keeps what the child reads: every sector the child does not
 * hold, where the old chain and the new parent read differently, is written
 * into the child with the old chain's bytes, and the child is flushed.  From
 * then on the child reads the same through either parent, so the header
 * rewrite that follows (relink.c) may land or not at a crash: both states
 * read alike.  A crash during the copy leaves the child over its old parent
 * with some of the old parent's bytes copied into it: the same content. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cleanup.h"
#include "vhd-internal.h"

#define REBASE_CHUNK (1024u * 1024)

/* The new parent may not be the child or have it in its own chain. */
static int check_loop(const vhd_t *c, const vhd_t *np, struct vhd_err *err) {
  struct stat cs, ps;
  if (fstat(c->fd, &cs) < 0)
    return vhd_set_err(err, -errno, "%s: %s", c->path, strerror(errno));
  for (const vhd_t *v = np; v; v = v->parent) {
    if (fstat(v->fd, &ps) == 0 && ps.st_dev == cs.st_dev && ps.st_ino == cs.st_ino)
      return vhd_set_err(err, -ELOOP, "%s: the new parent %s is the child itself", c->path,
                         v->path);
    if (memcmp(v->footer.uuid, c->footer.uuid, 16) == 0)
      return vhd_set_err(err, -ELOOP,
                         "%s: the new parent %s has the child's unique id in its chain (%s): "
                         "a loop of parents",
                         c->path, np->path, v->path);
  }
  return 0;
}

struct gap_list {
  struct {
    uint64_t off, len;
  } *v;
  size_t n, cap;
  uint64_t total;
};

/* Ranges the child does not hold: they read from the parent chain. */
static int collect_gaps(void *opaque, const struct vhd_extent *e) {
  struct gap_list *l = opaque;
  if (e->depth == 0)
    return 0;
  if (l->n && l->v[l->n - 1].off + l->v[l->n - 1].len == e->offset) {
    l->v[l->n - 1].len += e->length;
  } else {
    if (l->n == l->cap) {
      size_t cap = l->cap ? 2 * l->cap : 64;
      void *v = realloc(l->v, cap * sizeof *l->v);
      if (!v)
        return -ENOMEM;
      l->v = v;
      l->cap = cap;
    }
    l->v[l->n].off = e->offset;
    l->v[l->n].len = e->length;
    l->n++;
  }
  l->total += e->length;
  return 0;
}

/* The size the new parent is served at with the size rule left automatic
 * (vhdnbd's, QEMU's): a Virtual PC disk's geometry, which may end before
 * the current size the rebase reads it at (see commit.c).  Past it the
 * server reads zeros from it, whatever a current-size reader sees. */
static uint64_t served_size(const vhd_t *np) {
  return MIN(vhd_footer_auto_size(&np->footer), np->virtual_size);
}

/* Whether the sector at old and the new parent's (nw, at file offset at)
 * differ in either view of the new parent. */
static bool sector_differs(const uint8_t *old, const uint8_t *nw, uint64_t at, uint64_t served) {
  if (memcmp(old, nw, VHD_SECTOR_SIZE) != 0)
    return true;
  for (size_t i = 0; at >= served && i < VHD_SECTOR_SIZE; i++)
    if (old[i])
      return true;
  return false;
}

/* Copies into the child the sectors of [off, off+len) where old (what the
 * child reads there now) and the new parent differ, as a current-size
 * reader sees the new parent or as the server does (zeros past its served
 * size): the child then reads the same both ways. */
static int copy_differences(vhd_t *c, vhd_t *np, uint8_t *old, uint8_t *nw, uint64_t off,
                            size_t len, uint64_t *copied, struct vhd_err *err) {
  int r = vhd_read(c, old, off, len, err);
  if (r < 0)
    return r;
  size_t have = off >= np->virtual_size ? 0 : (size_t)MIN((uint64_t)len, np->virtual_size - off);
  memset(nw + have, 0, len - have);
  if (have && (r = vhd_read(np, nw, off, have, err)) < 0)
    return r;
  uint64_t served = served_size(np);
  for (size_t i = 0; i < len;) {
    if (!sector_differs(old + i, nw + i, off + i, served)) {
      i += VHD_SECTOR_SIZE;
      continue;
    }
    size_t j = i + VHD_SECTOR_SIZE;
    while (j < len && sector_differs(old + j, nw + j, off + j, served))
      j += VHD_SECTOR_SIZE;
    if ((r = vhd_write(c, old + i, off + i, j - i, 0, err)) < 0)
      return r;
    *copied += j - i;
    i = j;
  }
  return 0;
}

static int copy_all(vhd_t *c, vhd_t *np, const struct vhd_rebase_opts *o, uint64_t *copied,
                    struct vhd_err *err) {
  struct gap_list gaps = {0};
  CLEANUP_FREE uint8_t *old = malloc(REBASE_CHUNK);
  CLEANUP_FREE uint8_t *nw = malloc(REBASE_CHUNK);
  int r = old && nw ? vhd_map(c, 0, c->virtual_size, collect_gaps, &gaps, err) : -ENOMEM;
  if (r == -ENOMEM)
    vhd_set_err(err, r, "%s: out of memory", c->path);
  uint64_t done = 0;
  if (r == 0 && o->progress)
    o->progress(o->opaque, 0, gaps.total);
  for (size_t i = 0; r == 0 && i < gaps.n; i++) {
    for (uint64_t off = gaps.v[i].off, end = off + gaps.v[i].len; r == 0 && off < end;) {
      size_t len = (size_t)MIN((uint64_t)REBASE_CHUNK, end - off);
      r = copy_differences(c, np, old, nw, off, len, copied, err);
      off += len;
      done += len;
      if (r == 0 && o->progress)
        o->progress(o->opaque, done, gaps.total);
    }
  }
  free(gaps.v);
  return r;
}

int vhd_rebase(const char *child, const struct vhd_rebase_opts *o, struct vhd_rebase_result *res,
               struct vhd_err *err) {
  memset(res, 0, sizeof *res);
  if (!o || !o->new_parent)
    return vhd_set_err(err, -EINVAL, "%s: no new parent given", child);
  vhd_t *c = NULL, *np = NULL;
  /* Unsafe mode never reads the old parent: it may be gone. */
  /* Blocks new to the child take only the sectors copied into them. */
  /* At the current size, the chains too (see commit.c). */
  struct vhd_open_opts co = {.flags = (o->unsafe ? VHD_OPEN_NOPARENT : 0) | VHD_OPEN_SPARSE_BLOCKS,
                             .size_rule = VHD_SIZE_CURRENT,
                             .warn = o->warn,
                             .warn_opaque = o->opaque};
  int r = vhd_open(child, &co, &c, err);
  if (r < 0)
    return r;
  if (c->type != VHD_TYPE_DIFFERENCING) {
    r = vhd_set_err(err, -EINVAL, "%s: not a differencing image: it has no parent to change",
                    child);
    goto out;
  }
  /* Caught before opening it: the child's own lock would refuse it. */
  struct stat cs, ps;
  if (stat(o->new_parent, &ps) == 0 && fstat(c->fd, &cs) == 0 && ps.st_dev == cs.st_dev &&
      ps.st_ino == cs.st_ino) {
    r = vhd_set_err(err, -ELOOP, "%s: the new parent %s is the child itself", child,
                    o->new_parent);
    goto out;
  }
  struct vhd_open_opts po = {.flags = VHD_OPEN_RDONLY,
                             .size_rule = VHD_SIZE_CURRENT,
                             .warn = o->warn,
                             .warn_opaque = o->opaque};
  if ((r = vhd_open(o->new_parent, &po, &np, err)) < 0 || (r = check_loop(c, np, err)) < 0)
    goto out;
  if (!o->unsafe && (r = copy_all(c, np, o, &res->bytes, err)) < 0)
    goto out;
  r = vhd_header_relink(c, np, np->footer.timestamp, err);
out:
  if (np)
    vhd_close(np, NULL);
  if (c) {
    int rc = vhd_close(c, r < 0 ? NULL : err);
    if (r == 0)
      r = rc;
  }
  return r;
}
