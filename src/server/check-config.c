/* check-config.c: vhdnbd --check-config, startup without serving.
 *
 * It goes as far as startup would and stops before the first side effect:
 * the TLS credentials are loaded with the server's own code, and every
 * export's image is opened, parents included, read-only and without the
 * image lock, so that checking the configuration of a running server
 * neither disturbs it nor is refused by it.  Nothing is bound, written or
 * notified.  Every problem found is reported, not only the first. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "server.h"
#include "size.h"

static void on_warning(void *opaque, const char *msg) {
  log_msg(LOG_LEVEL_WARNING, "export '%s': %s", (const char *)opaque, msg);
}

static const char *type_name(enum vhd_type t) {
  switch (t) {
  case VHD_TYPE_FIXED:
    return "fixed";
  case VHD_TYPE_DYNAMIC:
    return "dynamic";
  case VHD_TYPE_DIFFERENCING:
    return "differencing";
  }
  return "unknown";
}

/* Loads the credentials exactly as startup does, then drops them.  Settings
 * that cannot be loaded at all (no credentials, both kinds) were reported
 * with the other settings. */
static unsigned check_tls(const struct settings *s) {
  if (s->tls == TLS_OFF || !s->tls_certificates == !s->tls_psk)
    return 0;
  struct tls_creds *creds = NULL;
  char err[512];
  if (tls_creds_load(s->tls_certificates, s->tls_psk, s->tls_verify_peer, &creds, err,
                     sizeof err) < 0) {
    log_msg(LOG_LEVEL_ERR, "TLS: %s", err);
    return 1;
  }
  tls_creds_free(creds);
  printf("tls %s: %s %s%s\n", s->tls == TLS_ON ? "on" : "require",
         s->tls_psk ? "pre-shared keys from" : "X.509 certificates from",
         s->tls_psk ? s->tls_psk : s->tls_certificates,
         s->tls_verify_peer ? ", client certificates verified" : "");
  return 0;
}

unsigned config_check_export(const struct settings *s, const struct export_spec *sp,
                             bool print) {
  const char *at = sp->origin ? sp->origin : "", *sep = sp->origin ? ": " : "";
  bool readonly = sp->readonly_set ? sp->readonly : s->readonly;
  struct vhd_open_opts opts = {
      .flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
      .size_rule = VHD_SIZE_AUTO,
      .warn = on_warning,
      .warn_opaque = sp->name,
  };
  vhd_t *vhd = NULL;
  struct vhd_err err = {{0}};
  int r = vhd_open(sp->image, &opts, &vhd, &err);
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "%s%sexport '%s': %s", at, sep, sp->name,
            err.msg[0] ? err.msg : strerror(-r));
    return 1;
  }
  /* The server opens a read-write export's image for writing (its parents
   * only for reading): a file or file system it may not write would stop
   * it at startup.  Under an overlay it writes only the children. */
  if (!readonly && sp->overlay.mode == OVERLAY_OFF &&
      faccessat(AT_FDCWD, sp->image, W_OK, AT_EACCESS) < 0) {
    log_msg(LOG_LEVEL_ERR, "%s%sexport '%s': %s: cannot be written, but the export is "
            "read-write: %s", at, sep, sp->name, sp->image, strerror(errno));
    vhd_close(vhd, NULL);
    return 1;
  }
  if (!print) {
    vhd_close(vhd, NULL);
    return 0;
  }
  char human[32];
  uint64_t size = vhd_virtual_size(vhd);
  printf("export \"%s\"%s: %s, %s, %s (%" PRIu64 " bytes), %s", sp->name,
         sp->name[0] ? "" : " (default)", sp->image, type_name(vhd_get_type(vhd)),
         size_format(size, human, sizeof human), size, readonly ? "read-only" : "read-write");
  for (vhd_t *p = vhd_parent(vhd); p; p = vhd_parent(p))
    printf("%s%s", p == vhd_parent(vhd) ? ", parents " : " -> ", vhd_path(p));
  if (sp->overlay.mode != OVERLAY_OFF)
    printf(", overlay %s in %s", overlay_mode_name(sp->overlay.mode),
           sp->overlay.dir ? sp->overlay.dir : overlay_default_dir());
  printf("\n");
  vhd_close(vhd, NULL);
  return 0;
}

int config_check(const struct settings *s, unsigned errors) {
  errors += check_tls(s);
  for (size_t i = 0; i < s->n_exports; i++)
    if (s->exports[i].image) /* else reported by config_load */
      errors += config_check_export(s, &s->exports[i], true);
  if (errors) {
    log_msg(LOG_LEVEL_ERR, "configuration check failed");
    return 1;
  }
  printf("configuration OK: %zu export%s\n", s->n_exports, s->n_exports == 1 ? "" : "s");
  return 0;
}
