/* exports.c: the export table.  Each export's image is opened once, at
 * startup (or by a reload, see reload.c), and shared by every connection
 * (one vhd_t, one queue), which is what lets us advertise
 * NBD_FLAG_CAN_MULTI_CONN. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "server.h"

/* The engine's warnings name the file already; the export's name says
 * which of several exports of one image it is. */
static void on_warning(void *opaque, const char *msg) {
  log_msg(LOG_LEVEL_WARNING, "export '%s': %s", (const char *)opaque, msg);
}

static void export_free(struct export *e) {
  if (!e)
    return;
  metrics_export_free(e);
  free(e->name);
  free(e->image);
  free(e->description);
  free(e->overlay.dir);
  free(e->base_stamp);
  free(e->base_stamp_top);
  acl_free(&e->allow);
  free(e);
}

void export_put(struct export *exp) {
  if (exp->base) {
    overlay_release(exp);
    return;
  }
  if (--exp->refs == 0 && exp->retired)
    reload_retired_unused(exp);
}

/* Writes are spread over the lanes by VHD block (2 MiB regions of a fixed
 * image, and never less than that), so writes into one block run in the
 * order the queue started them, one at a time: what the single serial
 * before the lanes gave every write.  The queue already orders overlapping
 * requests and the engine allows concurrent writes to different sectors of
 * a block (test-vhd-race), so this is not needed for correctness; it keeps
 * the writes that share a block's bitmap and allocation on one thread, and
 * sequential writes on one lane until they cross into the next block.  A
 * write over a block boundary runs on its first block's lane.  While the
 * recent writes held the file long, every write takes the first lane
 * (lanes.h). */
struct work_serial *export_write_lane(struct export *exp, uint64_t off) {
  if (server.write_lanes <= 1)
    return &exp->write_lanes[0];
  if (lane_policy_narrow(&exp->lanes)) {
    metrics_write_one_lane(exp);
    return &exp->write_lanes[0];
  }
  return &exp->write_lanes[(off >> exp->lane_shift) % server.write_lanes];
}

void export_set_lanes(struct export *exp) {
  struct vhd_info info;
  vhd_get_info(exp->vhd, &info);
  uint32_t shift = 21;
  while (shift < 31 && ((uint64_t)1 << shift) < info.block_size)
    shift++;
  exp->lane_shift = shift;
  exp->lanes.fixed = !server.adaptive_lanes;
}

/* What an overlay child records of its base (overlay.c): the size and
 * modification time of every image of the base's chain, the base first,
 * then each parent as "parent N": writing into a parent changes what the
 * base reads as much as writing into the base does.  The first three lines
 * are all an older vhdnbd recorded (base_stamp_top, kept to recognise its
 * records); a base without parents gives the same text either way. */
static int base_stamp_make(struct export *e) {
  char *s = NULL, *top = NULL;
  unsigned level = 0;
  for (vhd_t *v = e->vhd; v; v = vhd_parent(v), level++) {
    struct stat st;
    int r = vhd_file_stat(v, &st);
    if (r < 0) {
      free(s);
      free(top);
      return r;
    }
    char *next = NULL;
    int n = level == 0 ? asprintf(&next, "vhdnbd overlay base\nsize %lld\nmtime %lld.%09ld\n",
                                  (long long)st.st_size, (long long)st.st_mtim.tv_sec,
                                  st.st_mtim.tv_nsec)
                       : asprintf(&next, "%sparent %u size %lld\nparent %u mtime %lld.%09ld\n", s,
                                  level, (long long)st.st_size, level,
                                  (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
    free(s);
    s = n < 0 ? NULL : next;
    if (!s || (level == 0 && !(top = strdup(s)))) {
      free(s);
      free(top);
      return -ENOMEM;
    }
  }
  e->base_stamp = s;
  e->base_stamp_top = top;
  return 0;
}

int export_open(const struct settings *s, const struct export_spec *sp, struct export **out) {
  *out = NULL;
  struct export *e = calloc(1, sizeof *e);
  if (!e)
    return -ENOMEM;
  e->name = strdup(sp->name);
  e->image = strdup(sp->image);
  e->description = sp->description ? strdup(sp->description) : NULL;
  e->readonly = sp->readonly_set ? sp->readonly : s->readonly;
  e->overlay = sp->overlay;
  e->overlay.dir = NULL;
  if (sp->overlay.dir && !(e->overlay.dir = strdup(sp->overlay.dir))) {
    export_free(e);
    return -ENOMEM;
  }
  queue_init(&e->queue);
  if (sp->allow.n) {
    e->allow.entries = malloc(sp->allow.n * sizeof *e->allow.entries);
    if (e->allow.entries) {
      memcpy(e->allow.entries, sp->allow.entries, sp->allow.n * sizeof *e->allow.entries);
      e->allow.n = sp->allow.n;
    }
  }
  if (!e->name || !e->image || (sp->description && !e->description) ||
      e->allow.n != sp->allow.n) {
    export_free(e);
    return -ENOMEM;
  }
  /* Under overlays the image is every child's parent: never written. */
  bool overlaid = e->overlay.mode != OVERLAY_OFF;
  struct vhd_open_opts opts = {
      .flags = (e->readonly || overlaid ? VHD_OPEN_RDONLY : 0) | server.vhd_open_flags,
      .size_rule = VHD_SIZE_AUTO,
      .warn = on_warning,
      .warn_opaque = e->name,
  };
  struct vhd_err err = {{0}};
  int r = vhd_open(e->image, &opts, &e->vhd, &err);
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "%s%sexport '%s': %s", sp->origin ? sp->origin : "",
            sp->origin ? ": " : "", e->name, err.msg[0] ? err.msg : strerror(-r));
    export_free(e);
    return r;
  }
  e->size = vhd_virtual_size(e->vhd);
  export_set_lanes(e);
  if (overlaid && (r = base_stamp_make(e)) < 0) {
    log_msg(LOG_LEVEL_ERR, "export '%s': %s: recording its chain for overlays: %s", e->name,
            e->image, strerror(-r));
    vhd_close(e->vhd, NULL);
    export_free(e);
    return r;
  }
  if (vhd_is_readonly(e->vhd) && !overlaid)
    e->readonly = true;
  log_msg(LOG_LEVEL_INFO, "export '%s': %s, %" PRIu64 " bytes%s%s%s", e->name, e->image,
          e->size, e->readonly ? ", read-only" : "", overlaid ? ", overlay " : "",
          overlaid ? overlay_mode_name(e->overlay.mode) : "");
  struct vhd_info info;
  vhd_get_info(e->vhd, &info);
  if (info.saved_state && !e->readonly && !overlaid)
    log_msg(LOG_LEVEL_WARNING,
            "export '%s': %s has the saved-state flag set: a virtual machine was saved "
            "with this disk, and writes to it invalidate that saved state",
            e->name, e->image);
  *out = e;
  return 0;
}

int exports_open(struct server *srv, const struct settings *s) {
  srv->exports = calloc(s->n_exports ? s->n_exports : 1, sizeof *srv->exports);
  if (!srv->exports)
    return -ENOMEM;
  for (size_t i = 0; i < s->n_exports; i++) {
    int r = export_open(s, &s->exports[i], &srv->exports[srv->n_exports]);
    if (r < 0)
      return r;
    srv->n_exports++;
  }
  return 0;
}

int export_close(struct export *e) {
  struct vhd_err err = {{0}};
  int r = e->vhd ? vhd_close(e->vhd, &err) : 0;
  if (r < 0)
    log_msg(LOG_LEVEL_ERR, "export '%s': closing %s: %s", e->name, e->image,
            err.msg[0] ? err.msg : strerror(-r));
  transmission_log_unlogged_enospc(e, NULL);
  export_free(e);
  return r;
}

int exports_close(struct server *srv) {
  int ret = 0;
  for (size_t i = 0; i < srv->n_exports; i++) {
    int r = export_close(srv->exports[i]);
    if (r < 0)
      ret = r;
  }
  free(srv->exports);
  srv->exports = NULL;
  srv->n_exports = 0;
  return ret;
}

struct export *exports_find(struct server *srv, const char *name, size_t len) {
  for (size_t i = 0; i < srv->n_exports; i++) {
    struct export *e = srv->exports[i];
    if (strlen(e->name) == len && memcmp(e->name, name, len) == 0)
      return e;
  }
  return NULL;
}

uint16_t export_tflags(const struct export *exp, bool structured) {
  /* Every connection shares the one vhd_t whose flush covers all writes, so
   * multi-conn is truthful; under a persistent overlay, every connection
   * with the same key shares one.  A discarded overlay is each
   * connection's own: other connections never see its writes.  DF needs
   * structured replies (spec). */
  uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE;
  if (exp->overlay.mode != OVERLAY_DISCARD)
    f |= NBD_FLAG_CAN_MULTI_CONN;
  if (structured)
    f |= NBD_FLAG_SEND_DF;
  if (exp->readonly)
    f |= NBD_FLAG_READ_ONLY;
  else
    f |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
         NBD_FLAG_SEND_FAST_ZERO;
  return f;
}

enum acl_verdict export_access(const struct export *exp, const struct connection *conn) {
  struct acl_peer who;
  conn_identity(conn, &who);
  enum acl_verdict v = acl_check(&exp->allow, &who);
  return v == ACL_AFTER_TLS && !server.tls ? ACL_DENY : v;
}

bool export_allows(const struct export *exp, const struct connection *conn) {
  return export_access(exp, conn) == ACL_ALLOW;
}
