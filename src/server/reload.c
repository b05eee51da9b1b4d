/* reload.c: SIGHUP, the configuration read again without a restart.
 *
 * The command line is parsed again with the configuration file as it is
 * now, through the same code as at startup (settings_reparse), and every
 * export that is new or changed is checked as --check-config checks it.
 * Any problem refuses the whole new configuration: it is logged and the
 * old one keeps serving.  Reading the file and opening images is disk I/O:
 * it runs on a worker thread, and the loop only swaps the export table.
 *
 * Exports are compared by name: one whose settings are unchanged keeps its
 * open image and its connections; one that is gone, or changed, is retired
 * (a changed one is a removal plus an addition).  A retired export leaves
 * the table at once, so new clients do not find it; its connections are
 * drained as at shutdown (no new requests, those received are answered),
 * those still there after SERVER_SHUTDOWN_GRACE_MS are closed, and when
 * the last is gone its image is flushed and closed.  A new export that
 * shares its name with a retired one, or whose chain holds an image a
 * retired one holds (the file, by whatever path: a changed export, or a
 * new child served in place of its parent), is opened only then, since
 * the old one still holds the image's lock; the others are opened before
 * the table is swapped.  A lock on such an export's chain that will still
 * be there when it opens (one that no retired export holds) refuses the
 * reload before anything closes (deferred_locks).
 *
 * A SIGHUP while a reload is under way, its retired exports closing or its
 * deferred ones opening included, is queued, not dropped: once the reload
 * is over the file is read again (reload_finished).
 *
 * [global] settings are not applied by a reload: those that changed are
 * logged as needing a restart (listening addresses, TLS credentials and
 * limits are all fixed at startup).  Its read-only setting does reach the
 * exports that follow it, as at startup. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "server.h"

enum action { ACT_KEEP, ACT_OPEN, ACT_DEFER };

struct reload_job {
  struct work_item work;
  struct settings ns;
  unsigned errors;
  enum action *act;       /* per export of ns */
  struct export **opened; /* ACT_OPEN: the export opened */
  bool *retire;           /* per export of the current table */
  /* Locks the deferred exports checked so far will take (deferred_locks) */
  struct planned_lock {
    dev_t dev;
    ino_t ino;
    bool write;
  } *planned;
  size_t n_planned;
};

struct open_job {
  struct work_item work;
  size_t n;
  char **names;           /* cfg specs to open */
  struct export **opened;
};

static struct {
  bool busy;            /* a reload (or its deferred opens) is under way */
  bool pending;         /* a SIGHUP came while busy: read the file again after */
  unsigned retiring;    /* retired exports not closed yet */
  char **deferred;      /* names of exports to open once retiring is 0 */
  size_t n_deferred;
  uv_timer_t grace;
  bool grace_init;
} rl;

static bool effective_readonly(const struct settings *s, const struct export_spec *sp) {
  return sp->readonly_set ? sp->readonly : s->readonly;
}

static bool str_eq(const char *a, const char *b) {
  return a == b || (a && b && strcmp(a, b) == 0);
}

static bool spec_equal(const struct settings *as, const struct export_spec *a,
                       const struct settings *bs, const struct export_spec *b) {
  return str_eq(a->image, b->image) && str_eq(a->description, b->description) &&
         effective_readonly(as, a) == effective_readonly(bs, b) && a->allow.n == b->allow.n &&
         (a->allow.n == 0 ||
          memcmp(a->allow.entries, b->allow.entries, a->allow.n * sizeof *a->allow.entries) ==
              0) &&
         a->overlay.mode == b->overlay.mode && a->overlay.key == b->overlay.key &&
         a->overlay.max == b->overlay.max && str_eq(a->overlay.dir, b->overlay.dir);
}

static const struct export_spec *spec_find(const struct settings *s, const char *name) {
  for (size_t i = 0; i < s->n_exports; i++)
    if (strcmp(s->exports[i].name, name) == 0)
      return &s->exports[i];
  return NULL;
}

/* The locks retired exports hold on the file st (their images and
 * parents), by kind: they go when those exports close.  An overlay base
 * keeps its image open too, so its instances, which the loop may be
 * changing, need no look. */
static unsigned retired_locks(const struct reload_job *j, const struct stat *st,
                              unsigned *readers, unsigned *writers) {
  *readers = *writers = 0;
  for (size_t t = 0; t < server.n_exports; t++) {
    if (!j->retire[t])
      continue;
    for (vhd_t *v = server.exports[t]->vhd; v; v = vhd_parent(v)) {
      struct stat vs;
      if (vhd_file_stat(v, &vs) == 0 && vs.st_dev == st->st_dev && vs.st_ino == st->st_ino)
        (*(vhd_is_readonly(v) ? readers : writers))++;
    }
  }
  return *readers + *writers;
}

/* Whether the lock a deferred export will take on the file st (a write
 * lock if write) is kept out by a lock that stays once the retired exports
 * have closed.  The retired ones hold locks of their own, which a test of
 * the lock would find first and which hide any other behind them (another
 * process, or an export that stays, reading the same image): so the
 * kernel's list of locks is counted, less the retired ones, less none
 * else.  An earlier deferred export that will lock the same file counts
 * as a holder too.  Returns 1 when kept out, 0 when not or when it cannot
 * be known (the open then finds it). */
static int kept_out(const struct reload_job *j, const struct stat *st, bool write) {
  unsigned rr, rw, r = 0, w = 0;
  if (retired_locks(j, st, &rr, &rw) && vhd_lock_census(st, &r, &w) == 0) {
    r -= r < rr ? r : rr;
    w -= w < rw ? w : rw;
  }
  for (size_t k = 0; k < j->n_planned; k++)
    if (j->planned[k].dev == st->st_dev && j->planned[k].ino == st->st_ino)
      (*(j->planned[k].write ? &w : &r))++;
  return w > 0 || (write && r > 0);
}

/* A deferred export is opened only once the exports it waits for have
 * closed: too late to refuse the reload if its open then fails.  A lock on
 * its image or a parent that would refuse that open (another process's,
 * an export's that stays, or an earlier deferred export's) refuses the
 * reload now, before anything closes. */
static unsigned deferred_locks(struct reload_job *j, const struct settings *ns,
                               const struct export_spec *sp) {
  struct vhd_open_opts opts = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
                               .size_rule = VHD_SIZE_AUTO};
  vhd_t *vhd = NULL;
  struct vhd_err err = {{0}};
  if (vhd_open(sp->image, &opts, &vhd, &err) < 0)
    return 0; /* config_check_export said why */
  /* The image is written unless read-only or under an overlay; parents
   * are only read. */
  bool write = !effective_readonly(ns, sp) && sp->overlay.mode == OVERLAY_OFF;
  unsigned errors = 0;
  for (vhd_t *v = vhd; v; v = vhd_parent(v), write = false) {
    struct stat st;
    if (vhd_file_stat(v, &st) < 0)
      continue;
    unsigned rr, rw;
    if (!retired_locks(j, &st, &rr, &rw) && vhd_lock_test(vhd_path(v), write, &err) < 0) {
      errors++;
    } else if (kept_out(j, &st, write)) {
      snprintf(err.msg, sizeof err.msg,
               "%s: image is locked (%s) by an export that stays, another process, or an "
               "export before it in this reload: the %s lock it needs would be refused",
               vhd_path(v), write ? "any lock" : "a write lock", write ? "write" : "read");
      errors++;
    }
    if (errors) {
      log_msg(LOG_LEVEL_ERR, "%s%sexport '%s': %s", sp->origin ? sp->origin : "",
              sp->origin ? ": " : "", sp->name, err.msg);
      break;
    }
    struct planned_lock *pl = realloc(j->planned, (j->n_planned + 1) * sizeof *pl);
    if (!pl) {
      log_msg(LOG_LEVEL_ERR, "reload: out of memory");
      errors++;
      break;
    }
    j->planned = pl;
    j->planned[j->n_planned++] = (struct planned_lock){st.st_dev, st.st_ino, write};
  }
  vhd_close(vhd, NULL);
  return errors;
}

/* Whether export e serves the file at path: the same name, or the same
 * file reached by another (a symbolic link, "./"), whose lock is e's. */
static bool same_image(const struct export *e, const char *path) {
  if (strcmp(e->image, path) == 0)
    return true;
  struct stat a, b;
  return e->vhd && vhd_file_stat(e->vhd, &a) == 0 && stat(path, &b) == 0 &&
         a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

/* Whether a file of e's chain is no longer what its path names: replaced
 * (a backup restored by copy and rename, a new image moved in) or removed.
 * Served on, its writes would go to a file that is gone with the last
 * close, and the file at the path would carry no lock.  Such an export is
 * opened again, as one whose section changed. */
static bool chain_replaced(const struct export *e) {
  for (vhd_t *v = e->vhd; v; v = vhd_parent(v)) {
    struct stat was, now;
    if (vhd_file_stat(v, &was) < 0)
      continue;
    bool gone = stat(vhd_path(v), &now) < 0;
    if (gone || now.st_dev != was.st_dev || now.st_ino != was.st_ino) {
      log_msg(LOG_LEVEL_WARNING,
              "reload: export '%s': %s is not the file opened as it any more (%s): opening it "
              "again",
              e->name, vhd_path(v), gone ? "gone" : "replaced");
      return true;
    }
  }
  return false;
}

/* Whether an image of sp's chain (its own or a parent) is one a retired
 * export holds: an export serving a base that is now served through a new
 * child of it, say.  Its lock would refuse sp's open until that export
 * has closed, so sp waits for it as for a changed export. */
static bool chain_held_by_retired(const struct reload_job *j, const struct export_spec *sp) {
  struct vhd_open_opts opts = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
                               .size_rule = VHD_SIZE_AUTO};
  vhd_t *vhd = NULL;
  if (vhd_open(sp->image, &opts, &vhd, NULL) < 0)
    return false; /* the open proper will say why */
  bool held = false;
  for (vhd_t *v = vhd; v && !held; v = vhd_parent(v)) {
    struct stat st;
    unsigned r, w;
    held = vhd_file_stat(v, &st) == 0 && retired_locks(j, &st, &r, &w) > 0;
  }
  vhd_close(vhd, NULL);
  return held;
}

/* Worker thread.  The loop changes neither the table nor the settings
 * while a reload is busy, so both may be read here. */
static void reload_run(struct work_item *w) {
  struct reload_job *j = (struct reload_job *)w;
  const struct settings *cfg = server.cfg;
  j->errors = settings_reparse(&j->ns);
  if (j->errors)
    return;
  struct settings *ns = &j->ns;
  j->act = calloc(ns->n_exports, sizeof *j->act);
  j->opened = calloc(ns->n_exports, sizeof *j->opened);
  j->retire = calloc(server.n_exports + 1, sizeof *j->retire);
  if (!j->act || !j->opened || !j->retire) {
    log_msg(LOG_LEVEL_ERR, "reload: out of memory");
    j->errors++;
    return;
  }
  for (size_t t = 0; t < server.n_exports; t++) {
    const struct export *e = server.exports[t];
    const struct export_spec *now = spec_find(ns, e->name), *was = spec_find(cfg, e->name);
    j->retire[t] = !now || !was || !spec_equal(cfg, was, ns, now) || chain_replaced(e);
  }
  for (size_t i = 0; i < ns->n_exports; i++) {
    const struct export_spec *sp = &ns->exports[i];
    bool kept = false, conflict = false;
    for (size_t t = 0; t < server.n_exports; t++) {
      const struct export *e = server.exports[t];
      if (!j->retire[t] && strcmp(e->name, sp->name) == 0)
        kept = true;
      else if (j->retire[t] &&
               (strcmp(e->name, sp->name) == 0 || same_image(e, sp->image)))
        conflict = true;
    }
    if (kept) {
      j->act[i] = ACT_KEEP;
    } else if (conflict || chain_held_by_retired(j, sp)) {
      j->act[i] = ACT_DEFER;
      j->errors += config_check_export(ns, sp, false);
    } else {
      j->act[i] = ACT_OPEN;
      if (export_open(ns, sp, &j->opened[i]) < 0)
        j->errors++;
    }
  }
  /* After every open, whose locks count too. */
  for (size_t i = 0; i < ns->n_exports && !j->errors; i++)
    if (j->act[i] == ACT_DEFER)
      j->errors += deferred_locks(j, ns, &ns->exports[i]);
  if (j->errors) {
    for (size_t i = 0; i < ns->n_exports; i++)
      if (j->opened[i])
        export_close(j->opened[i]);
    memset(j->opened, 0, ns->n_exports * sizeof *j->opened);
  }
}

/* [global] settings are fixed at startup: say which ones a reload found
 * changed. */
static void log_global_changes(const struct settings *a, const struct settings *b) {
  char list[512] = "";
  size_t n = 0;
#define CHANGED(cond, key)                                                                     \
  do {                                                                                         \
    if (cond)                                                                                  \
      n += (size_t)snprintf(list + n, n < sizeof list ? sizeof list - n : 0, "%s%s",           \
                            n ? ", " : "", key);                                               \
  } while (0)
  bool binds = a->n_binds != b->n_binds;
  for (size_t i = 0; !binds && i < a->n_binds; i++)
    binds = strcmp(a->binds[i], b->binds[i]) != 0;
  CHANGED(!str_eq(a->port, b->port), "port");
  CHANGED(binds, "bind");
  CHANGED(!str_eq(a->unix_path, b->unix_path), "unix");
  CHANGED(a->max_connections != b->max_connections, "max-connections");
  CHANGED(a->max_connections_per_address != b->max_connections_per_address,
          "max-connections-per-address");
  CHANGED(a->max_handshakes != b->max_handshakes, "max-handshakes");
  CHANGED(a->handshake_timeout != b->handshake_timeout, "handshake-timeout");
  CHANGED(a->payload_timeout != b->payload_timeout, "payload-timeout");
  CHANGED(a->idle_timeout != b->idle_timeout, "idle-timeout");
  CHANGED(a->max_inflight != b->max_inflight, "max-inflight");
  CHANGED(a->threads != b->threads, "threads");
  CHANGED(a->write_lanes != b->write_lanes, "write-lanes");
  CHANGED(a->no_splice != b->no_splice, "splice");
  CHANGED(a->sparse_blocks != b->sparse_blocks, "sparse-blocks");
  CHANGED(!str_eq(a->pidfile, b->pidfile), "pidfile");
  CHANGED(!str_eq(a->metrics_file, b->metrics_file), "metrics-file");
  CHANGED(a->metrics_interval != b->metrics_interval, "metrics-interval");
  CHANGED(a->allow.n != b->allow.n ||
              (a->allow.n &&
               memcmp(a->allow.entries, b->allow.entries, a->allow.n * sizeof *a->allow.entries)),
          "allow");
  CHANGED(a->tls != b->tls, "tls");
  CHANGED(!str_eq(a->tls_certificates, b->tls_certificates), "tls-certificates");
  CHANGED(!str_eq(a->tls_psk, b->tls_psk), "tls-psk");
  CHANGED(a->tls_verify_peer != b->tls_verify_peer, "tls-verify-peer");
#undef CHANGED
  if (n)
    log_msg(LOG_LEVEL_WARNING,
            "reload: [global] settings changed that take effect only after a restart: %s",
            list);
}

/* Any loop: retired is set on the main loop while other loops may be
 * looking (their connections' exports are asked again once they are). */
bool reload_conn_uses_retired(const struct connection *c) {
  const struct export *e = c->exp;
  return e && (__atomic_load_n(&e->retired, __ATOMIC_RELAXED) ||
               (e->base && __atomic_load_n(&e->base->retired, __ATOMIC_RELAXED)));
}

/* Connections other loops serve with a retired export (only exp is read). */
static unsigned moved_using_retired(void) {
  unsigned n = 0;
  for (const struct connection *c = server.moved; c; c = c->moved_next)
    if (reload_conn_uses_retired(c))
      n++;
  return n;
}

/* Closes (close) or drains the clients of loop l whose export is retired;
 * returns how many. */
static unsigned end_retired_users(struct loop *l, bool close) {
  unsigned n = 0;
  struct connection *next;
  for (struct connection *c = l->conns; c; c = next) {
    next = c->next;
    if (c->closing || !reload_conn_uses_retired(c))
      continue;
    if (close)
      conn_close(c, "export removed by a reload");
    else
      conn_drain(c);
    n++;
  }
  return n;
}

/* The same on another loop's thread (loops_each_other). */
static void end_retired_in(struct loop *l, uintptr_t close) { end_retired_users(l, close != 0); }

static void on_grace(uv_timer_t *t) {
  unsigned n = moved_using_retired();
  if (n)
    loops_each_other(end_retired_in, true);
  n += end_retired_users(loops_main(), true);
  if (n)
    log_msg(LOG_LEVEL_WARNING,
            "reload: %u client%s of removed exports did not finish within %d s; closed", n,
            n == 1 ? "" : "s", SERVER_SHUTDOWN_GRACE_MS / 1000);
}

static void open_deferred(void);
static void reload_begin(struct server *srv, bool queued);

/* The reload under way is over.  A SIGHUP that came meanwhile was for a
 * file edited since that reload read it (or while it waited): it runs now,
 * else the operator's last edit would wait, unapplied and unsaid, for a
 * SIGHUP that may never come.  Several such SIGHUPs make one reload, since
 * it reads the file as it is by then. */
static void reload_finished(void) {
  rl.busy = false;
  if (rl.pending && !server.shutting_down) {
    rl.pending = false;
    reload_begin(&server, true);
  }
}

struct close_job {
  struct work_item work;
  struct export *e;
  char *name;
  int r;
};

static void close_run(struct work_item *w) {
  struct close_job *j = (struct close_job *)w;
  j->r = export_close(j->e);
}

static void close_done(struct work_item *w) {
  struct close_job *j = (struct close_job *)w;
  log_msg(LOG_LEVEL_NOTICE, "reload: export '%s' closed%s", j->name ? j->name : "?",
          j->r < 0 ? " (its final flush failed)" : "");
  free(j->name);
  free(j);
  if (--rl.retiring == 0) {
    uv_timer_stop(&rl.grace);
    if (!server.shutting_down)
      open_deferred();
  }
}

void reload_retired_unused(struct export *e) {
  struct close_job *j = calloc(1, sizeof *j);
  if (!j) {
    log_msg(LOG_LEVEL_ERR, "reload: out of memory closing export '%s'", e->name);
    return;
  }
  j->e = e;
  j->name = strdup(e->name);
  j->work.run = close_run;
  j->work.done = close_done;
  workers_submit(&j->work);
}

static void retire(struct export *e) {
  __atomic_store_n(&e->retired, true, __ATOMIC_RELAXED);
  rl.retiring++;
  unsigned n = moved_using_retired();
  if (n)
    loops_each_other(end_retired_in, false);
  n += end_retired_users(loops_main(), false);
  log_msg(LOG_LEVEL_NOTICE, "reload: export '%s' removed%s", e->name,
          n ? ", its clients drained" : "");
  if (e->refs == 0)
    reload_retired_unused(e);
}

static int table_add(struct export *e) {
  struct export **t = realloc(server.exports, (server.n_exports + 1) * sizeof *t);
  if (!t)
    return -ENOMEM;
  server.exports = t;
  server.exports[server.n_exports++] = e;
  return 0;
}

static void open_deferred_run(struct work_item *w) {
  struct open_job *j = (struct open_job *)w;
  for (size_t i = 0; i < j->n; i++) {
    const struct export_spec *sp = spec_find(server.cfg, j->names[i]);
    if (sp)
      export_open(server.cfg, sp, &j->opened[i]);
  }
}

static void open_deferred_done(struct work_item *w) {
  struct open_job *j = (struct open_job *)w;
  for (size_t i = 0; i < j->n; i++) {
    if (j->opened[i] && table_add(j->opened[i]) < 0) {
      log_msg(LOG_LEVEL_ERR, "reload: out of memory adding export '%s'", j->names[i]);
      export_close(j->opened[i]);
    } else if (j->opened[i]) {
      log_msg(LOG_LEVEL_NOTICE, "reload: export '%s' added", j->names[i]);
    } else {
      log_msg(LOG_LEVEL_ERR, "reload: export '%s' could not be opened again; it stays "
              "unavailable until the next reload", j->names[i]);
    }
    free(j->names[i]);
  }
  free(j->names);
  free(j->opened);
  free(j);
  reload_finished();
}

static void open_deferred(void) {
  if (!rl.n_deferred) {
    if (rl.busy && !rl.retiring)
      reload_finished();
    return;
  }
  struct open_job *j = calloc(1, sizeof *j);
  struct export **opened = calloc(rl.n_deferred, sizeof *opened);
  if (!j || !opened) {
    log_msg(LOG_LEVEL_ERR, "reload: out of memory opening the changed exports");
    free(j);
    free(opened);
    reload_finished();
    return;
  }
  j->n = rl.n_deferred;
  j->names = rl.deferred;
  j->opened = opened;
  rl.deferred = NULL;
  rl.n_deferred = 0;
  j->work.run = open_deferred_run;
  j->work.done = open_deferred_done;
  workers_submit(&j->work);
}

static void reload_job_free(struct reload_job *j) {
  settings_free(&j->ns);
  free(j->act);
  free(j->opened);
  free(j->retire);
  free(j->planned);
  free(j);
}

static void reload_done(struct work_item *w) {
  struct reload_job *j = (struct reload_job *)w;
  struct settings *cfg = server.cfg, *ns = &j->ns;
  if (j->errors) {
    log_msg(LOG_LEVEL_ERR,
            "reload: %s refused (%u problem%s, see above); still serving the previous "
            "configuration",
            settings_config_path(), j->errors, j->errors == 1 ? "" : "s");
    reload_job_free(j);
    notify_ready();
    reload_finished();
    return;
  }
  log_global_changes(cfg, ns);
  struct export **tab = calloc(ns->n_exports + 1, sizeof *tab);
  char **deferred = calloc(ns->n_exports + 1, sizeof *deferred);
  if (!tab || !deferred) {
    log_msg(LOG_LEVEL_ERR, "reload: out of memory; still serving the previous configuration");
    free(tab);
    free(deferred);
    for (size_t i = 0; i < ns->n_exports; i++)
      if (j->opened[i])
        export_close(j->opened[i]); /* never used: nothing to flush */
    reload_job_free(j);
    notify_ready();
    reload_finished();
    return;
  }
  size_t n = 0, added = 0, kept = 0;
  for (size_t i = 0; i < ns->n_exports; i++) {
    const char *name = ns->exports[i].name;
    if (j->act[i] == ACT_KEEP) {
      for (size_t t = 0; t < server.n_exports; t++)
        if (!j->retire[t] && strcmp(server.exports[t]->name, name) == 0)
          tab[n++] = server.exports[t];
      kept++;
    } else if (j->act[i] == ACT_OPEN) {
      tab[n++] = j->opened[i];
      log_msg(LOG_LEVEL_NOTICE, "reload: export '%s' added", name);
      added++;
    } else if ((deferred[rl.n_deferred] = strdup(name))) {
      rl.n_deferred++;
    }
  }
  struct export **old = server.exports;
  size_t n_old = server.n_exports;
  server.exports = tab;
  server.n_exports = n;
  for (size_t t = 0; t < n_old; t++)
    if (j->retire[t])
      retire(old[t]);
  free(old);
  free(rl.deferred);
  rl.deferred = deferred;
  /* What was applied becomes the configuration the next reload compares
   * with; the global read-only setting is folded into each export. */
  for (size_t i = 0; i < ns->n_exports; i++) {
    ns->exports[i].readonly = effective_readonly(ns, &ns->exports[i]);
    ns->exports[i].readonly_set = true;
  }
  struct export_spec *specs = cfg->exports;
  size_t n_specs = cfg->n_exports;
  cfg->exports = ns->exports;
  cfg->n_exports = ns->n_exports;
  ns->exports = specs;
  ns->n_exports = n_specs;
  log_msg(LOG_LEVEL_NOTICE,
          "reload: %s applied: %zu export%s unchanged, %zu opened, %u being removed, %zu "
          "waiting for removed ones to close",
          settings_config_path(), kept, kept == 1 ? "" : "s", added, rl.retiring,
          rl.n_deferred);
  reload_job_free(j);
  /* Before a queued reload (open_deferred may start one) says RELOADING. */
  notify_ready();
  if (rl.retiring)
    uv_timer_start(&rl.grace, on_grace, SERVER_SHUTDOWN_GRACE_MS, 0);
  else
    open_deferred(); /* ends the reload when it has nothing to open */
}

static void reload_begin(struct server *srv, bool queued) {
  if (!rl.grace_init) {
    uv_timer_init(srv->loop, &rl.grace);
    uv_unref((uv_handle_t *)&rl.grace); /* never keeps a stopping server alive */
    rl.grace_init = true;
  }
  struct reload_job *j = calloc(1, sizeof *j);
  if (!j) {
    log_msg(LOG_LEVEL_ERR, "reload: out of memory");
    return;
  }
  log_msg(LOG_LEVEL_NOTICE, "%s, reading %s again",
          queued ? "reload: the SIGHUP queued meanwhile" : "SIGHUP received",
          settings_config_path());
  notify_reloading();
  rl.busy = true;
  j->work.run = reload_run;
  j->work.done = reload_done;
  workers_submit(&j->work);
}

void reload_start(struct server *srv) {
  if (!settings_config_path()) {
    log_msg(LOG_LEVEL_WARNING, "SIGHUP ignored: started without --config, nothing to reload");
    return;
  }
  if (rl.busy) {
    log_msg(LOG_LEVEL_NOTICE, "SIGHUP received while the previous reload is under way (or "
            "waiting for clients of removed exports): queued, %s is read again once it is done",
            settings_config_path());
    rl.pending = true;
    return;
  }
  reload_begin(srv, false);
}
