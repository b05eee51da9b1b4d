/* commit.c: vhd_commit, the sectors a differencing disk holds written into
 * its parent.
 *
 * Order, so that the child reads the same whatever instant a crash comes:
 *  1. the child's sectors are written into the parent, and the parent is
 *     flushed: the child still holds (and shadows) every one of them, so
 *     reads through it do not change, however much of the copy reached
 *     the disk;
 *  2. the parent's footer gets a new timestamp (trailing footer, then its
 *     copy at 0, each synced): other children of the parent, if any, then
 *     warn that it changed;
 *  3. the child is replaced by an empty differencing disk with the same
 *     unique id (so its own children still find it), the new parent
 *     timestamp and the same locators: written to a temporary file beside
 *     it, synced, renamed over it, the directory synced.  Reads through it
 *     come from the parent, which holds the same bytes since step 1.  With
 *     `remove` the child is unlinked instead.
 * A crash before step 3 leaves the old child, whose parent timestamp is
 * stale after step 2 (a warning, no more); running the commit again copies
 * the same sectors again and finishes.  A crash in step 3 may leave the
 * temporary file (.NAME.commit-XXXXXX) behind: it is not an image anyone
 * refers to and may be deleted. */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "endian-be.h"
#include "vhd-internal.h"

#define COMMIT_CHUNK (1024u * 1024)

struct run {
  uint64_t off, len;
};
struct runs {
  struct run *v;
  size_t n, cap;
  uint64_t total;
};

static int collect_held(void *opaque, const struct vhd_extent *e) {
  struct runs *l = opaque;
  if (!(e->flags & VHD_MAP_DATA) || e->depth != 0)
    return 0;
  if (l->n && l->v[l->n - 1].off + l->v[l->n - 1].len == e->offset) {
    l->v[l->n - 1].len += e->length;
  } else {
    if (l->n == l->cap) {
      size_t cap = l->cap ? 2 * l->cap : 64;
      struct run *v = realloc(l->v, cap * sizeof *v);
      if (!v)
        return -ENOMEM;
      l->v = v;
      l->cap = cap;
    }
    l->v[l->n++] = (struct run){e->offset, e->length};
  }
  l->total += e->length;
  return 0;
}

static uint32_t now_timestamp(void) {
  time_t t = time(NULL);
  return t > VHD_TIMESTAMP_EPOCH ? (uint32_t)(t - VHD_TIMESTAMP_EPOCH) : 0;
}

static bool has_vhd_suffix(const char *name) {
  size_t n = strlen(name);
  return (n > 4 && strcasecmp(name + n - 4, ".vhd") == 0) ||
         (n > 5 && strcasecmp(name + n - 5, ".avhd") == 0);
}

struct scan {
  const uint8_t *parent_uuid, *child_uuid;
  struct stat child_st, parent_st;
  char list[2048];       /* other children of the parent */
  unsigned n_parent_children;
  char child_list[1024]; /* children of the child */
  unsigned n_child_children;
};

static void list_add(char *list, size_t size, const char *path) {
  size_t l = strlen(list);
  if (l + 8 < size && snprintf(list + l, size - l, "%s%s", l ? ", " : "", path) >= (int)(size - l))
    snprintf(list + size - 5, 5, "...");
}

/* Differencing images in dir that name the parent (or the child) as theirs:
 * what a directory can tell, no more (see vhd.h). */
static void scan_dir(struct scan *s, const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!has_vhd_suffix(de->d_name))
      continue;
    char path[4096 + 256];
    if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >= (int)sizeof path)
      continue;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) ||
        (st.st_dev == s->child_st.st_dev && st.st_ino == s->child_st.st_ino) ||
        (st.st_dev == s->parent_st.st_dev && st.st_ino == s->parent_st.st_ino))
      continue;
    struct vhd_open_opts o = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK | VHD_OPEN_NOPARENT};
    vhd_t *v = NULL;
    struct vhd_err e;
    if (vhd_open(path, &o, &v, &e) < 0)
      continue;
    if (v->type == VHD_TYPE_DIFFERENCING) {
      if (memcmp(v->header.parent_uuid, s->parent_uuid, 16) == 0) {
        s->n_parent_children++;
        list_add(s->list, sizeof s->list, path);
      } else if (memcmp(v->header.parent_uuid, s->child_uuid, 16) == 0) {
        s->n_child_children++;
        list_add(s->child_list, sizeof s->child_list, path);
      }
    }
    vhd_close(v, NULL);
  }
  closedir(d);
}

static void dir_of(const char *path, char *out, size_t len) {
  CLEANUP_FREE char *copy = strdup(path);
  snprintf(out, len, "%s", copy ? dirname(copy) : ".");
}

/* The directories of the parent and the child, as named and (through
 * symbolic links) where the files really are, each once. */
static int scan_children(struct scan *s, const char *child, const char *parent) {
  if (stat(child, &s->child_st) < 0 || stat(parent, &s->parent_st) < 0)
    return -errno;
  CLEANUP_FREE char *rparent = realpath(parent, NULL);
  CLEANUP_FREE char *rchild = realpath(child, NULL);
  const char *files[4] = {parent, rparent, child, rchild};
  struct stat seen[4];
  size_t n = 0;
  for (size_t i = 0; i < 4; i++) {
    char dir[4096];
    struct stat st;
    if (!files[i])
      continue;
    dir_of(files[i], dir, sizeof dir);
    if (stat(dir, &st) < 0)
      continue;
    size_t k = 0;
    while (k < n && (seen[k].st_dev != st.st_dev || seen[k].st_ino != st.st_ino))
      k++;
    if (k < n)
      continue;
    seen[n++] = st;
    scan_dir(s, dir);
  }
  return 0;
}

/* Whether the last step will be able to create (replace) or unlink the
 * child in its directory, tried before anything is written: a directory
 * that refuses it would otherwise be found only after the parent holds the
 * child's sectors, leaving a commit that cannot finish.  A file is created
 * and removed, as the last step will: permissions, a read-only file system
 * and a full inode table all show.  Named as step 3's temporary files are,
 * so a leftover is known for what it is. */
static int probe_dir_of(const char *child, const char *target, bool remove,
                        struct vhd_err *err) {
  char dir[4096], tmp[8192];
  dir_of(target, dir, sizeof dir);
  {
    CLEANUP_FREE char *copy = strdup(target);
    snprintf(tmp, sizeof tmp, "%s/.%s.commit-XXXXXX", dir, copy ? basename(copy) : "child");
  }
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0 || unlink(tmp) < 0) {
    int e = errno;
    if (fd >= 0)
      close(fd);
    return vhd_set_err(err, -e,
                       "%s: its directory %s does not let the commit %s it (%s); nothing was "
                       "written",
                       child, dir, remove ? "remove" : "replace", strerror(e));
  }
  close(fd);
  return 0;
}

/* The file the child is (a symbolic link resolved) is replaced or removed;
 * with remove, a link to it goes too. */
static int probe_child_dir(const char *child, bool remove, struct vhd_err *err) {
  CLEANUP_FREE char *real = realpath(child, NULL);
  const char *target = real ? real : child;
  int r = probe_dir_of(child, target, remove, err);
  struct stat st;
  if (r == 0 && remove && lstat(child, &st) == 0 && S_ISLNK(st.st_mode))
    r = probe_dir_of(child, child, remove, err);
  return r;
}

/* Writes an empty differencing disk with c's footer (unique id included),
 * block size and locator data, naming the parent with timestamp ts, to a
 * new file beside c, and renames it over c (see step 3 above). */
static int replace_with_empty(vhd_t *c, uint32_t ts, struct vhd_err *err) {
  /* Through a symbolic link, the file it points to is replaced, not the
   * link (which would leave that file full, with the child's unique id). */
  CLEANUP_FREE char *real = realpath(c->path, NULL);
  const char *target = real ? real : c->path;
  char dir[4096], tmp[8192];
  dir_of(target, dir, sizeof dir);
  {
    CLEANUP_FREE char *copy = strdup(target);
    snprintf(tmp, sizeof tmp, "%s/.%s.commit-XXXXXX", dir, copy ? basename(copy) : "child");
  }
  struct stat st;
  if (fstat(c->fd, &st) < 0)
    return vhd_set_err(err, -errno, "%s: %s", c->path, strerror(errno));
  int fd = mkostemp(tmp, O_CLOEXEC);
  if (fd < 0)
    return vhd_set_err(err, -errno, "%s: creating a file beside it: %s", c->path,
                       strerror(errno));
  /* The new file takes the child's place: same permissions and, when we
   * may, the same owner. */
  if (fchmod(fd, st.st_mode & 07777) < 0) {
    int e = errno;
    close(fd);
    unlink(tmp);
    return vhd_set_err(err, -e, "%s: %s", tmp, strerror(e));
  }
  if (fchown(fd, st.st_uid, st.st_gid) < 0) {
    /* Not ours to give away: the file keeps our ownership. */
  }

  uint8_t footer[VHD_FOOTER_SIZE], header[VHD_HEADER_SIZE];
  memcpy(footer, c->footer_raw, sizeof footer);
  be64_store(footer + 16, VHD_FOOTER_SIZE);
  be32_store(footer + 64, vhd_checksum(footer, sizeof footer, 64));
  const char *what = "reading the header";
  uint64_t at = c->header_offset;
  int r = vhd_io_pread(c->fd, header, sizeof header, c->header_offset);
  uint64_t bat_off = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
  uint64_t bat_span = ROUND_UP((uint64_t)c->max_entries * 4, 512);
  uint64_t end = bat_off + bat_span;
  CLEANUP_FREE uint8_t *bat = malloc(bat_span);
  CLEANUP_FREE uint8_t *loc = malloc(VHD_MAX_LOCATOR_DATA);
  if (r == 0 && (!bat || !loc))
    r = -ENOMEM;
  if (r < 0)
    goto fail;
  memset(bat, 0xFF, bat_span);
  be64_store(header + 16, bat_off);
  be32_store(header + 56, ts);
  what = "writing the BAT";
  at = bat_off;
  if ((r = vhd_io_pwrite_fd(fd, bat, bat_span, bat_off)) < 0)
    goto fail;
  if (c->batmap) {
    /* blktap's tapdisk wants its batmap right after the BAT of an image it
     * made (and refuses to open it read-write without): the child's header,
     * then a map as long, no block full. */
    uint8_t bh[512];
    what = "reading the Xen batmap header";
    at = c->batmap_header_offset;
    if ((r = vhd_io_pread(c->fd, bh, sizeof bh, at)) < 0)
      goto fail;
    be64_store(bh + 8, end + sizeof bh);
    be32_store(bh + 24, ~0u); /* the sum of no bits */
    memset(bat, 0, MIN(bat_span, (uint64_t)c->batmap_len));
    what = "writing the Xen batmap";
    at = end;
    if ((r = vhd_io_pwrite_fd(fd, bh, sizeof bh, end)) < 0)
      goto fail;
    end += sizeof bh;
    for (uint64_t done = 0; done < c->batmap_len;) {
      size_t n = (size_t)MIN(bat_span, (uint64_t)c->batmap_len - done);
      if ((r = vhd_io_pwrite_fd(fd, bat, n, end + done)) < 0)
        goto fail;
      done += n;
    }
    end += c->batmap_len;
  }
  for (int i = 0; i < 8; i++) {
    const struct vhd_locator *l = &c->header.locators[i];
    uint8_t *raw = header + VHD_LOCATOR_ENTRY(i);
    bool keep = l->code != VHD_PLAT_NONE && l->data_length > 0 &&
                l->data_length <= VHD_MAX_LOCATOR_DATA &&
                vhd_io_pread(c->fd, loc, l->data_length, l->data_offset) == 0;
    if (!keep) {
      memset(raw, 0, 24);
      continue;
    }
    uint32_t space = (uint32_t)ROUND_UP(l->data_length, 512);
    memset(loc + l->data_length, 0, space - l->data_length);
    be32_store(raw + 4, space);
    be64_store(raw + 16, end);
    what = "writing parent locator data";
    at = end;
    if ((r = vhd_io_pwrite_fd(fd, loc, space, end)) < 0)
      goto fail;
    end += space;
  }
  be32_store(header + 36, vhd_checksum(header, sizeof header, 36));
  what = "writing the image";
  at = 0;
  if ((r = vhd_io_pwrite_fd(fd, footer, sizeof footer, 0)) < 0 ||
      (r = vhd_io_pwrite_fd(fd, header, sizeof header, VHD_FOOTER_SIZE)) < 0 ||
      (r = vhd_io_pwrite_fd(fd, footer, sizeof footer, end)) < 0)
    goto fail;
  what = "syncing it";
  if ((r = vhd_io_sync_fd(fd)) < 0)
    goto fail;
  close(fd);
  fd = -1;
  what = "renaming it over the child";
  if ((r = vhd_io_rename(tmp, target)) < 0)
    goto fail;
  what = "syncing the directory";
  if ((r = vhd_io_sync_dir_of(target)) < 0)
    return vhd_set_err(err, r, "%s: %s: %s", c->path, what, strerror(-r));
  return 0;
fail:
  if (fd >= 0)
    close(fd);
  unlink(tmp);
  return vhd_set_err(err, r, "%s: emptying the child: %s (%s, offset %llu): %s", c->path, what,
                     tmp, (unsigned long long)at, strerror(-r));
}

static int copy_runs(vhd_t *c, vhd_t *p, const struct runs *l, const struct vhd_commit_opts *o,
                     struct vhd_err *err) {
  CLEANUP_FREE uint8_t *buf = malloc(COMMIT_CHUNK);
  if (!buf)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory", c->path);
  uint64_t done = 0;
  if (o->progress)
    o->progress(o->opaque, 0, l->total);
  for (size_t i = 0; i < l->n; i++) {
    for (uint64_t off = l->v[i].off, end = off + l->v[i].len; off < end;) {
      size_t len = (size_t)MIN((uint64_t)COMMIT_CHUNK, end - off);
      int r = vhd_read(c, buf, off, len, err);
      if (r < 0 || (r = vhd_write(p, buf, off, len, 0, err)) < 0)
        return r;
      off += len;
      done += len;
      if (o->progress)
        o->progress(o->opaque, done, l->total);
    }
  }
  return 0;
}

/* The parent's path, found through the child's chain as any open does. */
static int find_parent(const char *child, const struct vhd_commit_opts *co, char *out, size_t len,
                       struct vhd_err *err) {
  vhd_t *c = NULL;
  /* Its findings (a parent whose timestamp differs: modified since the
   * child was made) are the user's to see before the commit is done. */
  struct vhd_open_opts o = {.warn = co->warn, .warn_opaque = co->opaque};
  int r = vhd_open(child, &o, &c, err);
  if (r < 0)
    return r;
  if (c->type != VHD_TYPE_DIFFERENCING || !c->parent)
    r = vhd_set_err(err, -EINVAL, "%s: not a differencing image: there is no parent to commit to",
                    child);
  else
    snprintf(out, len, "%s", c->parent->path);
  vhd_close(c, NULL);
  return r;
}

int vhd_commit(const char *child, const struct vhd_commit_opts *o,
               struct vhd_commit_result *res, struct vhd_err *err) {
  static const struct vhd_commit_opts none;
  if (!o)
    o = &none;
  memset(res, 0, sizeof *res);
  int r = find_parent(child, o, res->parent, sizeof res->parent, err);
  if (r < 0)
    return r;
  const char *ppath = res->parent;
  struct stat pst;
  if (stat(ppath, &pst) < 0)
    return vhd_set_err(err, -errno, "%s: %s", ppath, strerror(errno));
  if (!(pst.st_mode & 0222))
    return vhd_set_err(err, -EACCES,
                       "%s: the parent is read-only (mode %04o): commit writes into it; make it "
                       "writable first",
                       ppath, (unsigned)(pst.st_mode & 07777));

  vhd_t *p = NULL, *c = NULL;
  struct runs runs = {0};
  /* Blocks new to the parent take only what the child held there.  Both
   * at their current size: a Virtual PC disk's geometry (the size the
   * engine serves it at) may end before it, and readers that take the
   * current size (Hyper-V, VirtualBox, libvhdi) see the sectors between,
   * which the commit must carry over like any other. */
  struct vhd_open_opts po = {.flags = VHD_OPEN_SPARSE_BLOCKS, .size_rule = VHD_SIZE_CURRENT};
  if ((r = vhd_open(ppath, &po, &p, err)) < 0)
    return r;
  struct vhd_open_opts co = {.flags = VHD_OPEN_NOPARENT, .size_rule = VHD_SIZE_CURRENT};
  if ((r = vhd_open(child, &co, &c, err)) < 0)
    goto out;
  if (memcmp(c->header.parent_uuid, p->footer.uuid, 16) != 0) {
    r = vhd_set_err(err, -EAGAIN, "%s: its parent changed while the commit started (%s)", child,
                    ppath);
    goto out;
  }
  if (c->virtual_size > p->virtual_size) {
    r = vhd_set_err(err, -EINVAL,
                    "%s: the child is %llu bytes, its parent %s only %llu: sectors past the "
                    "parent's end cannot be committed",
                    child, (unsigned long long)c->virtual_size, ppath,
                    (unsigned long long)p->virtual_size);
    goto out;
  }

  struct scan s = {.parent_uuid = p->footer.uuid, .child_uuid = c->footer.uuid};
  if ((r = scan_children(&s, child, ppath)) < 0) {
    r = vhd_set_err(err, r, "%s: %s", child, strerror(-r));
    goto out;
  }
  if ((s.n_parent_children || (o->remove && s.n_child_children)) && !o->force) {
    if (s.n_parent_children)
      r = vhd_set_err(err, -EBUSY,
                      "%s: other differencing images name it as their parent: %s; a commit "
                      "would change what they read (found by looking for *.vhd and *.avhd "
                      "files beside the parent and the child; --force commits anyway)",
                      ppath, s.list);
    else
      r = vhd_set_err(err, -EBUSY,
                      "%s: differencing images name it as their parent: %s; removing it would "
                      "leave them without one (--force removes it anyway)",
                      child, s.child_list);
    goto out;
  }
  res->other_children = s.n_parent_children;
  if (o->force && o->warn) {
    char msg[8192];
    if (snprintf(msg, sizeof msg,
             "--force: %u other child(ren) of %s found%s%s; children in other directories, "
             "named otherwise than *.vhd or *.avhd, on other hosts or in backups cannot be "
             "seen, and read %s's new content from now on",
             s.n_parent_children, ppath, s.n_parent_children ? ": " : "", s.list,
                 ppath) >= (int)sizeof msg)
      msg[sizeof msg - 1] = '\0';
    o->warn(o->opaque, msg);
    if (o->remove && s.n_child_children) {
      if (snprintf(msg, sizeof msg, "--force: %s is the parent of %s, which lose their parent",
                   child, s.child_list) >= (int)sizeof msg)
        msg[sizeof msg - 1] = '\0';
      o->warn(o->opaque, msg);
    }
  }

  if ((r = probe_child_dir(child, o->remove, err)) < 0)
    goto out;
  if ((r = vhd_map(c, 0, c->virtual_size, collect_held, &runs, err)) != 0) {
    if (r == -ENOMEM)
      vhd_set_err(err, r, "%s: out of memory", child);
    goto out;
  }
  /* A parent served at its Virtual PC geometry (see above) ends before
   * the child does: what the child holds between the two is what the
   * server reads there now.  Committed, the child would pass those reads
   * on to the parent, past its served end: zeros. */
  uint64_t p_served = MIN(vhd_footer_auto_size(&p->footer), p->virtual_size);
  uint64_t c_served = MIN(vhd_footer_auto_size(&c->footer), c->virtual_size);
  for (size_t i = 0; i < runs.n && c_served > p_served; i++) {
    const struct run *u = &runs.v[i];
    if (u->off + u->len > p_served && u->off < c_served) {
      r = vhd_set_err(err, -EINVAL,
                      "%s: the child holds data at offset %llu, past the %llu bytes its parent "
                      "%s is served at (its Virtual PC disk geometry): committed, it would read "
                      "as zeros; nothing was changed",
                      child, (unsigned long long)MAX(u->off, p_served),
                      (unsigned long long)p_served, ppath);
      goto out;
    }
  }
  if ((r = copy_runs(c, p, &runs, o, err)) < 0 || (r = vhd_flush(p, err)) < 0)
    goto out;
  res->bytes = runs.total;
  uint32_t ts = MAX(now_timestamp(), p->footer.timestamp + 1);
  if ((r = vhd_footer_set_timestamp(p, ts, err)) < 0)
    goto out;
  res->parent_timestamp = ts;
  /* The parent stays open, locked, until the child is emptied or gone:
   * a writer that got it before would write under a child that still
   * shadows it, and into what the emptied child then reads. */
  if (o->remove) {
    /* Through a symbolic link, the file it points to goes (left, it would
     * be a full child under a parent that moved on), then the link. */
    CLEANUP_FREE char *real = realpath(child, NULL);
    const char *target = real ? real : child;
    if ((r = vhd_io_unlink(target)) < 0) {
      r = vhd_set_err(err, r, "%s: removing it: %s", target, strerror(-r));
      goto out;
    }
    /* The file is gone and the parent holds its sectors: only whether its
     * removal survives a crash is in doubt (a rerun finds no child). */
    if ((r = vhd_io_sync_dir_of(target)) < 0) {
      r = vhd_set_err(err, r,
                      "%s: removed, its sectors committed to %s, but syncing the directory "
                      "failed: %s",
                      target, res->parent, strerror(-r));
      goto out;
    }
    if (target != child && (r = vhd_io_unlink(child)) < 0 && r != -ENOENT) {
      r = vhd_set_err(err, r, "%s: removed %s, its sectors committed to %s, but not the link: %s",
                      child, target, res->parent, strerror(-r));
      goto out;
    }
    r = 0;
  } else if ((r = replace_with_empty(c, ts, err)) < 0) {
    goto out;
  }
  /* The file c has open is gone (unlinked or renamed over): nothing of it
   * is dirty, nothing to write. */
  vhd_abandon(c);
  c = NULL;
  r = vhd_close(p, err);
  p = NULL;
out:
  free(runs.v);
  if (c)
    vhd_close(c, NULL);
  /* What reached the parent is the child's own data, still shadowed by
   * the child: flushing it is harmless, and keeps the blocks it went to. */
  if (p)
    vhd_close(p, NULL);
  return r;
}
