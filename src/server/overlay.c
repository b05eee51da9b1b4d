/* overlay.c: per-client copy-on-write children of an export's image.
 *
 * An export with overlay = discard or persistent opens its own image
 * read-only and never writes it.  Each client is served by an instance: a
 * differencing child of that image, opened with the export's open image as
 * its (borrowed, shared) parent, with its own queue and write serial.
 *
 *   discard     a new child per connection.  It is unlinked as soon as it
 *               is open, so it is gone when the connection ends, and even
 *               a killed server leaves nothing behind.
 *   persistent  one child per key (TLS identity or client address), kept
 *               in the overlay directory and opened again when the key
 *               comes back.  Connections with the same key share the open
 *               instance: a flush through one covers writes through all,
 *               which keeps NBD_FLAG_CAN_MULTI_CONN truthful.
 *
 * Creating, opening and closing a child is disk I/O (mkdir, file creation,
 * fsync at close): it runs on a worker thread, never on the loop.  An
 * instance goes OPENING -> OPEN -> CLOSING, and from CLOSING back to
 * OPENING when its key comes back before the close is done (the child's
 * lock would refuse a second open), or is freed.
 *
 * Child file names: "p-NAME-KEY-HASH.vhd" and "d-NAME-PID-TAG-N.vhd", where
 * NAME and KEY are short prefixes with every byte outside [A-Za-z0-9._-]
 * replaced, and HASH is SHA-256 of the export name and key in hex: the name
 * never holds a '/' or starts with a dot whatever the key contains, and the
 * hash keeps keys that sanitize alike apart.  TAG is random, drawn once per
 * process: a discard child left by a server killed between creating and
 * opening it (an empty file) may carry a later server's PID, in another
 * PID namespace or after the PIDs wrapped, and must not take its name. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <gnutls/crypto.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "server.h"

enum { INST_OPENING, INST_OPEN, INST_CLOSING };

struct overlay_waiter {
  struct overlay_waiter *next;
  struct connection *conn; /* holds a conn_ref */
  overlay_attach_cb cb;
  void *opaque;
};

struct overlay_job {
  struct work_item work;
  struct export *inst;
  char *dir;
  bool persistent;
  vhd_t *parent;
  uint64_t max;
  vhd_t *vhd;   /* open: the result; close: what to close */
  const char *legacy; /* open: the instance's legacy_child, or NULL */
  bool used_legacy;   /* open: the child is the one at legacy */
  bool created;
  int r;
  struct vhd_err err;
};

int parse_overlay_mode(const char *v, enum overlay_mode *out) {
  if (strcmp(v, "off") == 0)
    *out = OVERLAY_OFF;
  else if (strcmp(v, "discard") == 0)
    *out = OVERLAY_DISCARD;
  else if (strcmp(v, "persistent") == 0)
    *out = OVERLAY_PERSISTENT;
  else
    return -EINVAL;
  return 0;
}

int parse_overlay_key(const char *v, enum overlay_key *out) {
  if (strcmp(v, "identity") == 0)
    *out = OVERLAY_KEY_IDENTITY;
  else if (strcmp(v, "address") == 0)
    *out = OVERLAY_KEY_ADDRESS;
  else
    return -EINVAL;
  return 0;
}

const char *overlay_mode_name(enum overlay_mode m) {
  return m == OVERLAY_DISCARD ? "discard" : m == OVERLAY_PERSISTENT ? "persistent" : "off";
}

const char *overlay_default_dir(void) {
  static char dir[4096];
  if (dir[0])
    return dir;
  /* systemd's StateDirectory= may list several, separated by colons. */
  const char *sd = getenv("STATE_DIRECTORY");
  if (sd && sd[0] == '/') {
    size_t n = strcspn(sd, ":");
    snprintf(dir, sizeof dir, "%.*s/overlays", (int)n, sd);
  } else {
    snprintf(dir, sizeof dir, "%s/overlays", VHDNBD_STATE_DIR);
  }
  return dir;
}

static const char *instance_dir(const struct export *base) {
  return base->overlay.dir ? base->overlay.dir : overlay_default_dir();
}

static void sanitize(char *out, size_t cap, const char *in, const char *empty) {
  size_t n = 0;
  if (!*in)
    in = empty;
  for (; *in && n + 1 < cap; in++) {
    unsigned char c = (unsigned char)*in;
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_';
    out[n++] = ok ? (char)c : '_';
  }
  out[n] = '\0';
}

static int child_path(const struct export *base, const char *key, char **out) {
  char name[25], k[25];
  sanitize(name, sizeof name, base->name, "default");
  static uint64_t counter, tag;
  if (!key) {
    /* The loop thread alone names children: no race on tag or counter. */
    if (!tag && getrandom(&tag, sizeof tag, GRND_NONBLOCK) != (ssize_t)sizeof tag) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      tag = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    }
    return asprintf(out, "%s/d-%s-%ld-%08" PRIx32 "-%" PRIu64 ".vhd", instance_dir(base), name,
                    (long)getpid(), (uint32_t)(tag ^ (tag >> 32)), ++counter) < 0
               ? -ENOMEM
               : 0;
  }
  sanitize(k, sizeof k, key, "none");
  /* NUL-separated, so ("ab", "c") and ("a", "bc") hash apart. */
  size_t nl = strlen(base->name) + 1, kl = strlen(key);
  char *msg = malloc(nl + kl + 2);
  if (!msg)
    return -ENOMEM;
  memcpy(msg, base->name, nl);
  msg[nl] = base->overlay.key == OVERLAY_KEY_IDENTITY ? 'i' : 'a';
  memcpy(msg + nl + 1, key, kl);
  msg[nl + 1 + kl] = '\0';
  uint8_t digest[32];
  int r = gnutls_hash_fast(GNUTLS_DIG_SHA256, msg, nl + 1 + kl, digest);
  free(msg);
  if (r < 0)
    return -EIO;
  char hex[65];
  for (int i = 0; i < 32; i++)
    snprintf(hex + 2 * i, 3, "%02x", digest[i]);
  return asprintf(out, "%s/p-%s-%s-%s.vhd", instance_dir(base), name, k, hex) < 0 ? -ENOMEM
                                                                                   : 0;
}

/* mkdir -p, each missing level private to the service (mode 0700). */
static int make_dirs(const char *dir, struct vhd_err *err) {
  char *p = strdup(dir);
  if (!p)
    return -ENOMEM;
  int r = 0;
  for (char *s = p + 1;; s++) {
    if (*s != '/' && *s != '\0')
      continue;
    char c = *s;
    *s = '\0';
    if (mkdir(p, 0700) == 0) {
      /* A level made now must survive a power cut with the children that
       * will live under it: its entry in the level above is synced. */
      if ((r = vhd_io_sync_dir_of(p)) < 0) {
        snprintf(err->msg, sizeof err->msg, "overlay directory %s: syncing its parent: %s", p,
                 strerror(-r));
        break;
      }
    } else if (errno != EEXIST) {
      r = -errno;
      snprintf(err->msg, sizeof err->msg, "overlay directory %s: %s", p, strerror(errno));
      break;
    }
    *s = c;
    if (!c)
      break;
  }
  free(p);
  return r;
}

static void on_warning(void *opaque, const char *msg) {
  log_msg(LOG_LEVEL_WARNING, "%s", msg);
}

/* A persistent child's record of its image (CHILD.base): the size and
 * modification time, when the child was made, of the image and of each of
 * its parents (exports.c, base_stamp_make).  Writing into any of them keeps
 * the unique ids, which are all the child's header (and the image's) can
 * compare, but leaves the child's sectors over content they were not
 * written over: a child whose record differs is refused.  Written under a
 * temporary name and renamed; a child without one (an older vhdnbd's, or a
 * crash between the two renames) gets one for the image as it is. */
static int stamp_write(const char *path, const char *stamp, struct vhd_err *err) {
  CLEANUP_FREE char *tmp = NULL;
  if (asprintf(&tmp, "%s.new", path) < 0)
    return -ENOMEM;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  size_t len = strlen(stamp);
  int r = fd < 0 ? -errno : vhd_io_pwrite_fd(fd, stamp, len, 0);
  if (r == 0)
    r = vhd_io_sync_fd(fd);
  if (fd >= 0)
    close(fd);
  if (r == 0 && rename(tmp, path) < 0)
    r = -errno;
  /* The new name on disk too: a crash must not bring back the old record
   * (an upgraded one would be upgraded again, harmless; a missing one
   * would be made again for the image as it then is, which may have
   * changed). */
  if (r == 0)
    r = vhd_io_sync_dir_of(path);
  if (r < 0) {
    unlink(tmp);
    snprintf(err->msg, sizeof err->msg, "%s: recording the image: %s", path, strerror(-r));
  }
  return r;
}

/* Which image of base's chain a record's first line that differs from the
 * current stamp is about: 0 for the image itself, N for its Nth parent. */
static unsigned stamp_changed_level(const char *rec, const char *now) {
  while (*rec && *rec == *now) {
    const char *nl = strchr(rec, '\n');
    size_t n = nl ? (size_t)(nl - rec) + 1 : strlen(rec);
    if (strncmp(rec, now, n) != 0)
      break;
    rec += n;
    now += n;
  }
  unsigned level = 0;
  const char *line = strncmp(rec, "parent ", 7) == 0 ? rec : now;
  if (sscanf(line, "parent %u ", &level) != 1)
    level = 0;
  return level;
}

/* 0: the record matches or was made now; -ESTALE: the image or one of its
 * parents changed. */
static int stamp_check(const char *child, const struct export *base, struct vhd_err *err) {
  CLEANUP_FREE char *path = NULL;
  if (asprintf(&path, "%s.base", child) < 0)
    return -ENOMEM;
  char buf[4096];
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? stamp_write(path, base->base_stamp, err) : -errno;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  buf[n > 0 ? n : 0] = '\0';
  if (n >= 0 && strcmp(buf, base->base_stamp) == 0)
    return 0;
  /* An older vhdnbd recorded the image alone, blind to its parents as it
   * was: such a record that fits the image is taken and completed. */
  if (n >= 0 && strcmp(buf, base->base_stamp_top) == 0)
    return stamp_write(path, base->base_stamp, err);
  unsigned level = n >= 0 ? stamp_changed_level(buf, base->base_stamp) : 0;
  const vhd_t *v = base->vhd;
  for (unsigned i = 0; i < level && vhd_parent(v); i++)
    v = vhd_parent(v);
  if (v == base->vhd)
    snprintf(err->msg, sizeof err->msg,
             "%s: the image %s changed since this child was made (size or modification time "
             "differ from %s), so the child's sectors no longer fit it: refused (remove the "
             "child and its record to start over)",
             child, base->image, path);
  else
    snprintf(err->msg, sizeof err->msg,
             "%s: %s, a parent of the image %s, changed since this child was made (size or "
             "modification time differ from %s), so the child's sectors no longer fit the "
             "image: refused (remove the child and its record to start over)",
             child, vhd_path(v), base->image, path);
  return -ESTALE;
}

/* Worker thread. */
static void open_run(struct work_item *w) {
  struct overlay_job *j = (struct overlay_job *)w;
  const char *path = j->inst->child;
  if ((j->r = make_dirs(j->dir, &j->err)) < 0)
    return;
  /* A child an older version made under the client's other key is the
   * client's child still, unless one under the key it has now exists. */
  if (j->persistent && j->legacy && access(path, F_OK) < 0 && access(j->legacy, F_OK) == 0) {
    path = j->legacy;
    j->used_legacy = true;
  }
  struct vhd_create_opts co = {
      .type = VHD_TYPE_DIFFERENCING,
      .parent = j->inst->base->image,
      .mode = 0600, /* one client's data, for the service's eyes only */
  };
  if (!j->persistent) {
    if ((j->r = vhd_create(path, &co, &j->err)) < 0)
      return;
    j->created = true;
  } else if (access(path, F_OK) < 0) {
    /* Created under a temporary name and renamed: a crash halfway leaves
     * no half-made child to fail the next open. */
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.new", path) < 0) {
      j->r = -ENOMEM;
      return;
    }
    unlink(tmp);
    j->r = vhd_create(tmp, &co, &j->err);
    CLEANUP_FREE char *rec = NULL;
    if (j->r == 0 && asprintf(&rec, "%s.base", path) < 0)
      j->r = -ENOMEM;
    if (j->r == 0)
      j->r = stamp_write(rec, j->inst->base->base_stamp, &j->err);
    if (j->r == 0 && rename(tmp, path) < 0) {
      j->r = -errno;
      snprintf(j->err.msg, sizeof j->err.msg, "%s: %s", path, strerror(errno));
    }
    /* The child's name (and its record's) must be durable before any
     * write to it is acknowledged as flushed. */
    if (j->r == 0 && (j->r = vhd_io_sync_dir_of(path)) < 0)
      snprintf(j->err.msg, sizeof j->err.msg, "%s: syncing its directory: %s", path,
               strerror(-j->r));
    if (j->r < 0)
      unlink(tmp);
    free(tmp);
    if (j->r < 0)
      return;
    j->created = true;
  } else if ((j->r = stamp_check(path, j->inst->base, &j->err)) < 0) {
    return;
  }
  struct vhd_open_opts oo = {
      .flags = server.vhd_open_flags,
      .size_rule = VHD_SIZE_AUTO,
      .warn = on_warning,
      .parent = j->parent,
      .max_file_size = j->max,
  };
  j->r = vhd_open(path, &oo, &j->vhd, &j->err);
  if (!j->persistent)
    unlink(path); /* open handles keep it; nothing outlives them */
}

static void close_run(struct work_item *w) {
  struct overlay_job *j = (struct overlay_job *)w;
  j->r = vhd_close(j->vhd, &j->err);
}

static void instance_free(struct export *inst) {
  struct export *base = inst->base;
  for (struct export **pp = &base->instances; *pp; pp = &(*pp)->instances) {
    if (*pp == inst) {
      *pp = inst->instances;
      break;
    }
  }
  free(inst->name);
  free(inst->description);
  free(inst->key);
  free(inst->child);
  free(inst->legacy_child);
  free(inst);
  export_put(base);
}

static void start_open(struct export *inst);

static void close_done(struct work_item *w) {
  struct overlay_job *j = (struct overlay_job *)w;
  struct export *inst = j->inst;
  if (j->r < 0) {
    log_msg(LOG_LEVEL_ERR, "export '%s': closing overlay %s: %s", inst->name, inst->child,
            j->err.msg[0] ? j->err.msg : strerror(-j->r));
    /* A persistent child's writes were to outlive the server: the exit
     * status says they may not have (a discarded one's go anyway). */
    if (inst->key)
      server.overlay_close_failed = true;
  } else
    log_msg(LOG_LEVEL_INFO, "export '%s': overlay %s closed", inst->name, inst->child);
  transmission_log_unlogged_enospc(inst, inst->child);
  free(j);
  inst->vhd = NULL;
  if (inst->waiters)
    start_open(inst); /* the key came back while we closed */
  else
    instance_free(inst);
}

void overlay_release(struct export *inst) {
  if (--inst->refs > 0)
    return;
  struct overlay_job *j = calloc(1, sizeof *j);
  if (!j) {
    /* Without memory for the job the child stays open until exit. */
    log_msg(LOG_LEVEL_ERR, "export '%s': out of memory closing overlay %s", inst->name,
            inst->child);
    return;
  }
  inst->state = INST_CLOSING;
  j->inst = inst;
  j->vhd = inst->vhd;
  j->work.run = close_run;
  j->work.done = close_done;
  workers_submit(&j->work);
}

/* Hands the outcome of opening inst to everyone waiting for it.  Each
 * waiter holds one of the instance's references: on failure they all go,
 * and with them the instance. */
static void finish_open(struct export *inst, vhd_t *vhd, int r, const char *msg, bool created) {
  struct overlay_waiter *wl = inst->waiters;
  inst->waiters = NULL;
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "export '%s': overlay %s: %s", inst->name, inst->child,
            msg && msg[0] ? msg : strerror(-r));
  } else {
    inst->vhd = vhd;
    export_set_lanes(inst);
    inst->state = INST_OPEN;
    inst->write_error_logged = false;
    log_msg(LOG_LEVEL_INFO, "export '%s': overlay %s %s%s%s", inst->name, inst->child,
            created ? "created" : "reopened", inst->key ? " for " : "",
            inst->key ? inst->key : "");
  }
  while (wl) {
    struct overlay_waiter *next = wl->next;
    struct connection *conn = wl->conn;
    if (r < 0) {
      inst->refs--;
      if (!conn->closing)
        wl->cb(conn, NULL, r, inst->name, wl->opaque);
    } else if (conn->closing) {
      overlay_release(inst);
    } else {
      wl->cb(conn, inst, 0, inst->name, wl->opaque);
      /* A reload removed the export while the child opened: the client
       * gets the same drain as the export's other clients. */
      if (inst->base->retired && !conn->closing)
        conn_drain(conn);
    }
    conn_unref(conn);
    free(wl);
    wl = next;
  }
  if (r < 0)
    instance_free(inst);
}

static void open_done(struct work_item *w) {
  struct overlay_job *j = (struct overlay_job *)w;
  if (j->used_legacy) {
    /* From now on the instance's child is that one (closing, logging). */
    free(j->inst->child);
    j->inst->child = j->inst->legacy_child;
    j->inst->legacy_child = NULL;
  }
  finish_open(j->inst, j->vhd, j->r, j->err.msg, j->created);
  free(j);
}

static void start_open(struct export *inst) {
  struct export *base = inst->base;
  struct overlay_job *j = calloc(1, sizeof *j);
  if (!j) {
    finish_open(inst, NULL, -ENOMEM, NULL, false);
    return;
  }
  inst->state = INST_OPENING;
  j->inst = inst;
  j->dir = (char *)instance_dir(base);
  j->persistent = inst->key != NULL;
  j->legacy = inst->legacy_child;
  j->parent = base->vhd;
  j->max = base->overlay.max;
  j->work.run = open_run;
  j->work.done = open_done;
  workers_submit(&j->work);
}

/* What a persistent overlay keys on for conn (*out: malloc'd), or -EACCES
 * with why.  The whole identity, however long: a key cut short would give
 * two identities that differ only past the cut one child.  An IPv4-mapped
 * IPv6 address (::ffff:a.b.c.d, a dual-stack listener's view of an IPv4
 * client) keys as a.b.c.d, so a client has one child whichever way it
 * comes; for an IPv4 client *legacy (malloc'd, else NULL) is then
 * ::ffff:a.b.c.d, the key older versions gave it when it came that way,
 * under which its child may still be. */
static int connection_key(const struct connection *conn, const struct export *exp, char **out,
                          char **legacy, const char **why) {
  char buf[INET6_ADDRSTRLEN];
  *legacy = NULL;
  if (exp->overlay.key == OVERLAY_KEY_IDENTITY) {
    const char *id = conn->tls ? tls_session_identity(conn->tls) : NULL;
    if (!id) {
      *why = conn->tls ? "the client's TLS session shows no identity (PSK identity or verified "
                         "certificate)"
                       : "the client did not use TLS, so it has no identity";
      return -EACCES;
    }
    return (*out = strdup(id)) ? 0 : -ENOMEM;
  }
  const struct sockaddr_storage *a = &conn->addr;
  if (a->ss_family == AF_INET) {
    if (!inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, buf, sizeof buf))
      return -errno;
    /* Its child may be from when it came IPv4-mapped. */
    if (!(*out = strdup(buf)) || asprintf(legacy, "::ffff:%s", buf) < 0) {
      free(*out);
      *out = NULL;
      *legacy = NULL;
      return -ENOMEM;
    }
    return 0;
  }
  if (a->ss_family != AF_INET6) {
    *why = "the client has no IP address (Unix socket or stdio)";
    return -EACCES;
  }
  const struct in6_addr *a6 = &((const struct sockaddr_in6 *)a)->sin6_addr;
  if (!inet_ntop(AF_INET6, a6, buf, sizeof buf))
    return -errno;
  if (!IN6_IS_ADDR_V4MAPPED(a6))
    return (*out = strdup(buf)) ? 0 : -ENOMEM;
  if (!(*legacy = strdup(buf)) || !inet_ntop(AF_INET, a6->s6_addr + 12, buf, sizeof buf) ||
      !(*out = strdup(buf))) {
    free(*legacy);
    *legacy = NULL;
    return -ENOMEM;
  }
  return 0;
}

int overlay_key_check(const struct connection *conn, const struct export *exp, const char **why) {
  if (exp->overlay.mode != OVERLAY_PERSISTENT)
    return 0;
  CLEANUP_FREE char *key = NULL;
  CLEANUP_FREE char *legacy = NULL;
  return connection_key(conn, exp, &key, &legacy, why);
}

int overlay_attach(struct connection *conn, struct export *exp, overlay_attach_cb cb,
                   void *opaque, const char **why) {
  CLEANUP_FREE char *key = NULL;
  CLEANUP_FREE char *legacy = NULL;
  bool persistent = exp->overlay.mode == OVERLAY_PERSISTENT;
  if (persistent) {
    int r = connection_key(conn, exp, &key, &legacy, why);
    if (r < 0)
      return r;
  }
  struct overlay_waiter *w = calloc(1, sizeof *w);
  if (!w)
    return -ENOMEM;
  w->conn = conn;
  w->cb = cb;
  w->opaque = opaque;
  struct export *inst = NULL;
  bool fresh = false;
  if (persistent)
    for (inst = exp->instances; inst && strcmp(inst->key, key) != 0; inst = inst->instances)
      ;
  if (inst && inst->state == INST_OPEN) {
    free(w);
    inst->refs++;
    cb(conn, inst, 0, inst->name, opaque);
    return 0;
  }
  if (!inst) {
    inst = calloc(1, sizeof *inst);
    if (!inst || !(inst->name = strdup(exp->name)) ||
        (exp->description && !(inst->description = strdup(exp->description))) ||
        (persistent && !(inst->key = strdup(key))) ||
        child_path(exp, persistent ? key : NULL, &inst->child) < 0 ||
        (legacy && child_path(exp, legacy, &inst->legacy_child) < 0)) {
      if (inst) {
        free(inst->name);
        free(inst->description);
        free(inst->key);
        free(inst->child);
        free(inst);
      }
      free(w);
      return -ENOMEM;
    }
    inst->base = exp;
    inst->size = exp->size;
    inst->overlay = exp->overlay;
    inst->overlay.dir = NULL; /* the base's; instances never look at it */
    queue_init(&inst->queue);
    inst->instances = exp->instances;
    exp->instances = inst;
    exp->refs++;
    fresh = true;
  }
  inst->refs++;
  conn_ref(conn);
  w->next = inst->waiters;
  inst->waiters = w;
  /* An OPENING instance's job picks the new waiter up; a CLOSING one's
   * close_done opens it again. */
  if (fresh)
    start_open(inst);
  return 0;
}
