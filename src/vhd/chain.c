/* chain.c: finding and opening the parent of a differencing disk. */
#include "config.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "vhd-internal.h"

static void slashes_to_posix(char *s) {
  for (; *s; s++)
    if (*s == '\\')
      *s = '/';
}

static const char *last_component(const char *s) {
  const char *p = strrchr(s, '/');
  return p ? p + 1 : s;
}

/* Reads one locator's path as UTF-8 with POSIX separators. */
static int locator_path(vhd_t *vhd, const struct vhd_locator *l, char *out, size_t out_len) {
  uint32_t len = l->data_length;
  if (len == 0 || len > VHD_MAX_LOCATOR_DATA || l->data_offset >= vhd->file_size ||
      len > vhd->file_size - l->data_offset)
    return -EINVAL;
  CLEANUP_FREE uint8_t *raw = malloc(len + 1);
  if (!raw)
    return -ENOMEM;
  int r = vhd_io_pread(vhd->fd, raw, len, l->data_offset);
  if (r < 0)
    return r;
  if (l->code == VHD_PLAT_W2RU || l->code == VHD_PLAT_W2KU) {
    vhd_utf16_to_utf8(raw, len, false, out, out_len);
  } else if (l->code == VHD_PLAT_MACX) {
    raw[len] = 0;
    const char *s = (const char *)raw;
    /* A file URL: the host (localhost, or none) goes, the path stays. */
    if (strncmp(s, "file://", 7) == 0) {
      s += 7;
      s += strcspn(s, "/");
    }
    snprintf(out, out_len, "%s", s);
  } else if (l->code == VHD_PLAT_WI2R || l->code == VHD_PLAT_WI2K) {
    /* The deprecated 8-bit forms of W2ru and W2ku (Virtual PC's own). */
    raw[len] = 0;
    snprintf(out, out_len, "%s", (const char *)raw);
  } else {
    return -ENOTSUP;
  }
  return out[0] ? 0 : -EINVAL;
}

/* A URL's path with its %XX escapes decoded (a space is %20 in one a Mac
 * writes as a URL should be).  Returns false when there is nothing to
 * decode, or the escapes make no path (a NUL byte). */
static bool percent_decode(const char *in, char *out, size_t out_len) {
  static const char hex[] = "0123456789abcdef0123456789ABCDEF";
  bool any = false;
  size_t n = 0;
  for (; *in && n + 1 < out_len; in++) {
    const char *h1, *h2;
    if (in[0] == '%' && in[1] && in[2] && (h1 = strchr(hex, in[1])) &&
        (h2 = strchr(hex, in[2]))) {
      int v = (int)((h1 - hex) % 16 * 16 + (h2 - hex) % 16);
      if (v == 0)
        return false;
      out[n++] = (char)v;
      in += 2;
      any = true;
    } else {
      out[n++] = *in;
    }
  }
  out[n] = '\0';
  return any && !*in;
}

struct candidate_ctx {
  vhd_t *child;
  int depth;
  /* Where relative names are looked for: the directory of the file the
   * child is (symbolic links resolved), where the tools that wrote its
   * locators measured them from; then, if other, the directory of the
   * path it was opened by. */
  char dirs[2][4096];
  int n_dirs;
  char tried[2048];
  vhd_t *found;
  bool give_up; /* a deeper level found a loop: stop searching */
  int last_err;
  struct vhd_err err;
};

/* Whether path is one of the ", "-separated entries of list, whole (a
 * path that is part of a longer one listed is not). */
static bool tried_already(const char *list, const char *path) {
  size_t n = strlen(path);
  for (const char *p = strstr(list, path); p; p = strstr(p + 1, path))
    if ((p == list || (p - list >= 2 && p[-2] == ',' && p[-1] == ' ')) &&
        (p[n] == '\0' || (p[n] == ',' && p[n + 1] == ' ')))
      return true;
  return false;
}

static void try_file(struct candidate_ctx *c, const char *full);

static void try_candidate(struct candidate_ctx *c, const char *path) {
  if (c->found || c->give_up || !path[0])
    return;
  if (path[0] == '/') {
    try_file(c, path);
    return;
  }
  for (int d = 0; d < c->n_dirs && !c->found && !c->give_up; d++) {
    char full[8192];
    snprintf(full, sizeof full, "%s/%s", c->dirs[d],
             path[0] == '.' && path[1] == '/' ? path + 2 : path);
    try_file(c, full);
  }
}

static void try_file(struct candidate_ctx *c, const char *full) {
  /* Every place looked at is named if none holds the parent. */
  size_t tl = strlen(c->tried);
  if (!tried_already(c->tried, full))
    snprintf(c->tried + tl, sizeof c->tried - tl, "%s%s", tl ? ", " : "", full);
  struct stat st, self;
  if (stat(full, &st) != 0)
    return;
  if (fstat(c->child->fd, &self) == 0 && st.st_dev == self.st_dev && st.st_ino == self.st_ino) {
    /* A name that leads back to the child: a parent of the same name in
     * another directory (vm/disk.vhd over base/disk.vhd) makes the name
     * beside the child one; the search goes on.  Only a child that gives
     * its own unique id as its parent's is a loop. */
    if (memcmp(c->child->header.parent_uuid, c->child->footer.uuid, 16) == 0) {
      c->last_err = -ELOOP;
      vhd_set_err(&c->err, -ELOOP, "%s: the image names itself as its parent", c->child->path);
      c->give_up = true;
    }
    return;
  }
  /* A FIFO or a device would block the open, or answer it with side
   * effects: a parent is a regular file, as any image vhd_open takes. */
  if (!S_ISREG(st.st_mode)) {
    c->last_err = -EINVAL;
    vhd_set_err(&c->err, -EINVAL, "%s: candidate parent %s is not a regular file",
                c->child->path, full);
    return;
  }
  /* A child opened without a lock (to look at an image another process
   * serves) must not lock its parents either: a writer of a parent would
   * refuse the read lock. */
  struct vhd_open_opts po = {
      .flags = VHD_OPEN_RDONLY | (c->child->nolock ? VHD_OPEN_NOLOCK : 0),
      .warn = c->child->warn,
      .warn_opaque = c->child->warn_opaque,
      .size_rule = c->child->size_rule,
  };
  vhd_t *p = NULL;
  struct vhd_err e;
  int r = vhd_open_depth(full, &po, c->depth + 1, &p, &e);
  if (r < 0) {
    c->last_err = r;
    c->err = e;
    /* A loop further down fails the same way through every candidate:
     * searching on would multiply the opens at every level. */
    c->give_up = r == -ELOOP;
    return;
  }
  if (memcmp(p->footer.uuid, c->child->header.parent_uuid, 16) != 0) {
    c->last_err = -EINVAL;
    vhd_set_err(&c->err, -EINVAL,
                "%s: candidate parent %s has a different unique id than the child's parent "
                "unique id",
                c->child->path, full);
    vhd_free(p);
    return;
  }
  c->found = p;
}

int vhd_parent_open(vhd_t *vhd, int depth, struct vhd_err *err) {
  if (depth + 1 >= VHD_MAX_CHAIN_DEPTH)
    return vhd_set_err(err, -ELOOP,
                       "%s: differencing chain deeper than %d levels (a loop of parents?)",
                       vhd->path, VHD_MAX_CHAIN_DEPTH);
  struct candidate_ctx *c = calloc(1, sizeof *c);
  if (!c)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory", vhd->path);
  c->child = vhd;
  c->depth = depth;
  {
    CLEANUP_FREE char *real = realpath(vhd->path, NULL);
    CLEANUP_FREE char *copy = strdup(vhd->path);
    if (!copy) {
      free(c);
      return vhd_set_err(err, -ENOMEM, "%s: out of memory", vhd->path);
    }
    const char *given = dirname(copy);
    CLEANUP_FREE char *given_real = realpath(given, NULL);
    const char *real_dir = real ? dirname(real) : NULL;
    /* Named as given where that is the same directory (messages and the
     * parent's path stay as the user wrote them). */
    if (real_dir && given_real && strcmp(given_real, real_dir) != 0)
      snprintf(c->dirs[c->n_dirs++], sizeof c->dirs[0], "%s", real_dir);
    snprintf(c->dirs[c->n_dirs++], sizeof c->dirs[0], "%s", given);
  }
  /* Order: relative Unicode path, absolute Unicode path (its last component
   * beside the child, then as a POSIX path), Mac URL, the deprecated 8-bit
   * relative and absolute paths, the header's name. */
  static const uint32_t order[] = {VHD_PLAT_W2RU, VHD_PLAT_W2KU, VHD_PLAT_MACX, VHD_PLAT_WI2R,
                                   VHD_PLAT_WI2K};
  char path[4096];
  for (size_t o = 0; o < ARRAY_SIZE(order) && !c->found && !c->give_up; o++) {
    for (int i = 0; i < 8 && !c->found && !c->give_up; i++) {
      const struct vhd_locator *l = &vhd->header.locators[i];
      if (l->code != order[o] || locator_path(vhd, l, path, sizeof path) < 0)
        continue;
      /* A Mac URL's path decoded first; as written after (vhd-util
       * writes a space as it is). */
      char decoded[4096];
      if (l->code == VHD_PLAT_MACX && percent_decode(path, decoded, sizeof decoded)) {
        try_candidate(c, decoded);
        try_candidate(c, last_component(decoded));
      }
      /* A POSIX absolute path is tried as written first: a backslash in
       * it is part of a file name, not a Windows separator. */
      if (path[0] == '/')
        try_candidate(c, path);
      slashes_to_posix(path);
      if (l->code == VHD_PLAT_W2RU || l->code == VHD_PLAT_WI2R) {
        try_candidate(c, path);
      } else {
        try_candidate(c, last_component(path));
        if (path[0] == '/')
          try_candidate(c, path);
      }
    }
  }
  if (!c->found && vhd->parent_name[0]) {
    char name[1024];
    snprintf(name, sizeof name, "%s", vhd->parent_name);
    slashes_to_posix(name);
    try_candidate(c, last_component(name));
  }
  int r = 0;
  if (c->found) {
    vhd->parent = c->found;
    if (c->found->footer.timestamp != vhd->header.parent_timestamp)
      vhd_warn(vhd,
               "%s: parent %s timestamp %u differs from the child's parent timestamp %u (the "
               "parent may have been modified)",
               vhd->path, c->found->path, c->found->footer.timestamp,
               vhd->header.parent_timestamp);
    if (c->found->virtual_size != vhd->virtual_size)
      vhd_warn(vhd, "%s: parent %s is %llu bytes, the child %llu", vhd->path, c->found->path,
               (unsigned long long)c->found->virtual_size,
               (unsigned long long)vhd->virtual_size);
  } else if (c->last_err) {
    r = vhd_set_err(err, c->last_err, "%s", c->err.msg);
  } else {
    r = vhd_set_err(err, -ENOENT,
                    "%s: parent \"%s\" not found (looked through the parent locators and the "
                    "parent name beside the child%s%s)",
                    vhd->path, vhd->parent_name, c->tried[0] ? "; tried " : "", c->tried);
  }
  free(c);
  return r;
}
