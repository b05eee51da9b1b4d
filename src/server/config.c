/* config.c: the INI configuration file and the settings it shares with the
 * command line.
 *
 *   # comment            ; comment
 *   [global]
 *   port = 10809
 *   bind = 127.0.0.1     (repeatable; also space/comma separated)
 *   unix = /run/vhdnbd.sock
 *   read-only = false
 *   max-connections = 128
 *   max-connections-per-address = 32   (default: a quarter of max-connections)
 *   max-handshakes = 32                (default: a quarter of max-connections)
 *   handshake-timeout = 10
 *   payload-timeout = 30
 *   idle-timeout = 0
 *   max-inflight = 128M
 *   threads = 8
 *   loops = 1
 *   write-lanes = 1      (default: derived from the CPUs, see main.c)
 *   splice = yes         (no: READ data always copied, see splice.h)
 *   sparse-blocks = no   (yes: new blocks' unwritten space left as holes)
 *   pidfile = /run/vhdnbd.pid
 *   metrics-file = /var/lib/prometheus/node-exporter/vhdnbd.prom
 *   metrics-interval = 15
 *   allow = 192.0.2.0/24, 2001:db8::/32   (repeatable; clients allowed at all)
 *   tls = off | on | require
 *   tls-certificates = /etc/vhdnbd/pki
 *   tls-psk = /etc/vhdnbd/keys.psk
 *   tls-verify-peer = no
 *   [export NAME]        ([export] or [export ""] is the default export)
 *   image = /srv/disk.vhd
 *   read-only = yes
 *   description = Some text
 *   allow = 10.0.0.0/8   (repeatable; clients that may see this export)
 *   overlay = off | discard | persistent   (see overlay.c)
 *   overlay-dir = /var/lib/vhdnbd/overlays
 *   overlay-key = identity | address
 *   overlay-max = 1G
 *
 * A key is set once per section ([global] may be split, its parts counting
 * as one section), bind and allow excepted.  Errors name the file and line;
 * config_load logs every one and returns -EINVAL. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cleanup.h"
#include "log.h"
#include "server.h"
#include "size.h"

int parse_bool(const char *v, bool *out) {
  static const char *const yes[] = {"1", "yes", "true", "on"};
  static const char *const no[] = {"0", "no", "false", "off"};
  for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
    if (strcasecmp(v, yes[i]) == 0) {
      *out = true;
      return 0;
    }
    if (strcasecmp(v, no[i]) == 0) {
      *out = false;
      return 0;
    }
  }
  return -EINVAL;
}

int parse_tls_mode(const char *v, enum tls_mode *out) {
  if (strcmp(v, "off") == 0)
    *out = TLS_OFF;
  else if (strcmp(v, "on") == 0)
    *out = TLS_ON;
  else if (strcmp(v, "require") == 0)
    *out = TLS_REQUIRE;
  else
    return -EINVAL;
  return 0;
}

int settings_add_export(struct settings *s, const char *name, const char *image,
                        const char *description, bool readonly, bool readonly_set,
                        const char *origin) {
  struct export_spec *e = realloc(s->exports, (s->n_exports + 1) * sizeof *e);
  if (!e)
    return -ENOMEM;
  s->exports = e;
  e = &s->exports[s->n_exports];
  memset(e, 0, sizeof *e);
  e->name = strdup(name);
  e->image = image ? strdup(image) : NULL;
  e->description = description ? strdup(description) : NULL;
  e->origin = origin ? strdup(origin) : NULL;
  e->readonly = readonly;
  e->readonly_set = readonly_set;
  s->n_exports++;
  if (!e->name || (image && !e->image) || (description && !e->description) ||
      (origin && !e->origin))
    return -ENOMEM;
  return 0;
}

void settings_free(struct settings *s) {
  for (size_t i = 0; i < s->n_exports; i++) {
    free(s->exports[i].name);
    free(s->exports[i].image);
    free(s->exports[i].description);
    free(s->exports[i].origin);
    free(s->exports[i].overlay.dir);
    acl_free(&s->exports[i].allow);
  }
  acl_free(&s->allow);
  free(s->tls_certificates);
  free(s->tls_psk);
  free(s->metrics_file);
  free(s->exports);
  for (size_t i = 0; i < s->n_binds; i++)
    free(s->binds[i]);
  free(s->binds);
  free(s->port);
  free(s->unix_path);
  free(s->pidfile);
  memset(s, 0, sizeof *s);
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s))
    s++;
  size_t n = strlen(s);
  while (n > 0 && isspace((unsigned char)s[n - 1]))
    s[--n] = '\0';
  return s;
}

static int add_binds(struct settings *s, const char *value) {
  CLEANUP_FREE char *copy = strdup(value);
  if (!copy)
    return -ENOMEM;
  char *save = NULL;
  for (char *tok = strtok_r(copy, " ,\t", &save); tok; tok = strtok_r(NULL, " ,\t", &save)) {
    char **b = realloc(s->binds, (s->n_binds + 1) * sizeof *b);
    if (!b)
      return -ENOMEM;
    s->binds = b;
    if (!(s->binds[s->n_binds] = strdup(tok)))
      return -ENOMEM;
    s->n_binds++;
  }
  return 0;
}

static int parse_uint(const char *v, unsigned max, unsigned *out) {
  char *end;
  errno = 0;
  unsigned long n = strtoul(v, &end, 10);
  if (!isdigit((unsigned char)*v) || *end || errno || n > max)
    return -EINVAL;
  *out = (unsigned)n;
  return 0;
}

static int set_string(char **field, const char *v) {
  free(*field);
  *field = strdup(v);
  return *field ? 0 : -ENOMEM;
}

static int add_allow(struct acl *acl, const char *v) {
  char err[256];
  int r = acl_add(acl, v, err, sizeof err);
  if (r == -EINVAL)
    log_msg(LOG_LEVEL_ERR, "%s", err);
  return r;
}

static int global_key(struct settings *s, const char *key, const char *v) {
  if (strcmp(key, "port") == 0) {
    unsigned port;
    if (parse_uint(v, 65535, &port) < 0)
      return -EINVAL;
    return set_string(&s->port, v);
  }
  if (strcmp(key, "bind") == 0)
    return add_binds(s, v);
  if (strcmp(key, "unix") == 0)
    return set_string(&s->unix_path, v);
  if (strcmp(key, "read-only") == 0)
    return parse_bool(v, &s->readonly);
  if (strcmp(key, "max-connections") == 0)
    return parse_uint(v, 1000000, &s->max_connections);
  if (strcmp(key, "max-connections-per-address") == 0)
    return parse_uint(v, 1000000, &s->max_connections_per_address);
  if (strcmp(key, "max-handshakes") == 0)
    return parse_uint(v, 1000000, &s->max_handshakes);
  if (strcmp(key, "payload-timeout") == 0)
    return parse_uint(v, 86400, &s->payload_timeout);
  if (strcmp(key, "handshake-timeout") == 0)
    return parse_uint(v, 86400, &s->handshake_timeout);
  if (strcmp(key, "max-inflight") == 0)
    return size_parse(v, &s->max_inflight) < 0 || s->max_inflight == 0 ? -EINVAL : 0;
  if (strcmp(key, "threads") == 0)
    return parse_uint(v, SERVER_MAX_THREADS, &s->threads) < 0 || s->threads == 0 ? -EINVAL : 0;
  if (strcmp(key, "loops") == 0)
    return parse_uint(v, LOOPS_MAX, &s->loops) < 0 || s->loops == 0 ? -EINVAL : 0;
  if (strcmp(key, "write-lanes") == 0)
    return parse_uint(v, SERVER_MAX_WRITE_LANES, &s->write_lanes) < 0 || s->write_lanes == 0
               ? -EINVAL
               : 0;
  if (strcmp(key, "idle-timeout") == 0)
    return parse_uint(v, 86400 * 7, &s->idle_timeout);
  if (strcmp(key, "pidfile") == 0)
    return set_string(&s->pidfile, v);
  if (strcmp(key, "metrics-file") == 0)
    return set_string(&s->metrics_file, v);
  if (strcmp(key, "metrics-interval") == 0)
    return parse_uint(v, 86400, &s->metrics_interval) < 0 || s->metrics_interval == 0 ? -EINVAL
                                                                                       : 0;
  if (strcmp(key, "allow") == 0)
    return add_allow(&s->allow, v);
  if (strcmp(key, "tls") == 0) {
    s->tls_set = true;
    return parse_tls_mode(v, &s->tls);
  }
  if (strcmp(key, "tls-certificates") == 0)
    return set_string(&s->tls_certificates, v);
  if (strcmp(key, "tls-psk") == 0)
    return set_string(&s->tls_psk, v);
  if (strcmp(key, "tls-verify-peer") == 0)
    return parse_bool(v, &s->tls_verify_peer);
  if (strcmp(key, "splice") == 0) {
    bool on;
    int r = parse_bool(v, &on);
    s->no_splice = !on;
    return r;
  }
  if (strcmp(key, "sparse-blocks") == 0)
    return parse_bool(v, &s->sparse_blocks);
  return -ENOENT;
}

static int export_key(struct export_spec *e, const char *key, const char *v) {
  if (strcmp(key, "image") == 0)
    return set_string(&e->image, v);
  if (strcmp(key, "description") == 0)
    return set_string(&e->description, v);
  if (strcmp(key, "read-only") == 0) {
    e->readonly_set = true;
    return parse_bool(v, &e->readonly);
  }
  if (strcmp(key, "allow") == 0)
    return add_allow(&e->allow, v);
  if (strcmp(key, "overlay") == 0)
    return parse_overlay_mode(v, &e->overlay.mode);
  if (strcmp(key, "overlay-key") == 0)
    return parse_overlay_key(v, &e->overlay.key);
  if (strcmp(key, "overlay-dir") == 0)
    return v[0] ? set_string(&e->overlay.dir, v) : -EINVAL;
  if (strcmp(key, "overlay-max") == 0)
    return size_parse(v, &e->overlay.max) < 0 || e->overlay.max == 0 ? -EINVAL : 0;
  return -ENOENT;
}

/* "[export NAME]", "[export \"NAME\"]", "[export]" -> NAME (may be ""). */
static int section_export_name(char *sect, char **name) {
  char *rest = trim(sect + strlen("export"));
  size_t n = strlen(rest);
  if (n >= 2 && rest[0] == '"' && rest[n - 1] == '"') {
    rest[n - 1] = '\0';
    rest++;
  }
  *name = rest;
  return 0;
}

/* Keys of a section already set, and on which line: a key set twice is
 * an error, since which of the two the operator meant is anybody's guess
 * (the later one used to win, unsaid).  Only keys whose values add up
 * (bind, allow) may repeat. */
struct seen_keys {
  size_t n;
  struct {
    char key[32];
    unsigned line;
  } k[48]; /* more than there are keys of a section */
};

static bool key_repeatable(const char *key) {
  return strcmp(key, "bind") == 0 || strcmp(key, "allow") == 0;
}

/* The line key was first set on in the section, or 0; records it at line
 * if it was not set yet. */
static unsigned key_seen(struct seen_keys *seen, const char *key, unsigned line) {
  for (size_t i = 0; i < seen->n; i++)
    if (strcmp(seen->k[i].key, key) == 0)
      return seen->k[i].line;
  if (seen->n < ARRAY_SIZE(seen->k) && strlen(key) < sizeof seen->k[0].key) {
    strcpy(seen->k[seen->n].key, key);
    seen->k[seen->n++].line = line;
  }
  return 0;
}

/* Every problem is reported, not only the first: a check of the file
 * (--check-config) should list all there is to fix.  After a bad section
 * header the section's keys are skipped, since where they belong is unknown. */
int config_load(const char *path, struct settings *s) {
  FILE *f = fopen(path, "r");
  if (!f) {
    int e = errno;
    log_msg(LOG_LEVEL_ERR, "%s: %s", path, strerror(e));
    return -e;
  }
  char line[8192];
  unsigned lineno = 0;
  enum { NONE, GLOBAL, EXPORT, SKIP } sect = NONE;
  size_t first_export = s->n_exports;
  /* [global] may be split into several sections: its keys are one set. */
  struct seen_keys global_seen = {0}, export_seen = {0};
  int ret = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    if (!strchr(line, '\n') && !feof(f)) {
      log_msg(LOG_LEVEL_ERR, "%s:%u: line too long", path, lineno);
      ret = -EINVAL;
      int c;
      while ((c = fgetc(f)) != EOF && c != '\n')
        ;
      continue;
    }
    char *l = trim(line);
    if (*l == '\0' || *l == '#' || *l == ';')
      continue;
    if (*l == '[') {
      char *end = strchr(l, ']');
      sect = SKIP;
      if (!end || *trim(end + 1) != '\0') {
        log_msg(LOG_LEVEL_ERR, "%s:%u: malformed section header", path, lineno);
        ret = -EINVAL;
        continue;
      }
      *end = '\0';
      char *name = trim(l + 1);
      if (strcmp(name, "global") == 0) {
        sect = GLOBAL;
      } else if (strncmp(name, "export", 6) == 0 &&
                 (name[6] == '\0' || isspace((unsigned char)name[6]))) {
        char *ename;
        section_export_name(name, &ename);
        bool dup = false;
        for (size_t i = first_export; i < s->n_exports && !dup; i++) {
          if (strcmp(s->exports[i].name, ename) == 0) {
            log_msg(LOG_LEVEL_ERR, "%s:%u: export '%s' defined twice (first at %s)", path,
                    lineno, ename, s->exports[i].origin);
            ret = -EINVAL;
            dup = true;
          }
        }
        if (dup)
          continue;
        char origin[4200];
        snprintf(origin, sizeof origin, "%s:%u", path, lineno);
        if (settings_add_export(s, ename, NULL, NULL, false, false, origin) < 0) {
          ret = -ENOMEM;
          break;
        }
        sect = EXPORT;
        export_seen.n = 0;
      } else {
        log_msg(LOG_LEVEL_ERR, "%s:%u: unknown section [%s]", path, lineno, name);
        ret = -EINVAL;
      }
      continue;
    }
    char *eq = strchr(l, '=');
    if (!eq) {
      log_msg(LOG_LEVEL_ERR, "%s:%u: expected key = value", path, lineno);
      ret = -EINVAL;
      continue;
    }
    *eq = '\0';
    char *key = trim(l), *value = trim(eq + 1);
    size_t vl = strlen(value);
    if (vl >= 2 && value[0] == '"' && value[vl - 1] == '"') {
      value[vl - 1] = '\0';
      value++;
    }
    int r;
    if (sect == SKIP)
      continue;
    if (sect == GLOBAL)
      r = global_key(s, key, value);
    else if (sect == EXPORT)
      r = export_key(&s->exports[s->n_exports - 1], key, value);
    else
      r = -ENOENT;
    if (r == -ENOMEM) {
      ret = r;
      break;
    }
    if (r == -ENOENT) {
      log_msg(LOG_LEVEL_ERR, "%s:%u: unknown key '%s'%s", path, lineno, key,
              sect == NONE ? " outside any section" : "");
      ret = -EINVAL;
    } else if (r < 0) {
      log_msg(LOG_LEVEL_ERR, "%s:%u: invalid value for '%s': '%s'", path, lineno, key, value);
      ret = -EINVAL;
    }
    unsigned first;
    if (r != -ENOENT && !key_repeatable(key) &&
        (first = key_seen(sect == GLOBAL ? &global_seen : &export_seen, key, lineno))) {
      const char *ename = sect == EXPORT ? s->exports[s->n_exports - 1].name : NULL;
      log_msg(LOG_LEVEL_ERR, "%s:%u: '%s' already set on line %u in [%s%s%s]", path, lineno,
              key, first, sect == GLOBAL ? "global" : "export", ename && *ename ? " " : "",
              ename ? ename : "");
      ret = -EINVAL;
    }
  }
  if (ret != -ENOMEM) {
    for (size_t i = first_export; i < s->n_exports; i++) {
      if (!s->exports[i].image) {
        log_msg(LOG_LEVEL_ERR, "%s: export '%s' has no image =", s->exports[i].origin,
                s->exports[i].name);
        ret = -EINVAL;
      }
    }
  }
  fclose(f);
  return ret;
}
