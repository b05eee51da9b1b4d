/* main.c: vhdnbd's command line, startup and orderly shutdown. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bufpool.h"
#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "splice.h"
#include "size.h"
#include "workers.h"

#define EXIT_USAGE 2

struct server server;

static uv_signal_t sig_term, sig_int, sig_hup;
static uv_timer_t grace_timer;

static void usage(FILE *f) {
  fprintf(f,
          "Usage: vhdnbd [OPTIONS] [IMAGE]\n"
          "Serve VHD images (fixed, dynamic, differencing) over NBD.\n"
          "\n"
          "Exports:\n"
          "  IMAGE                    serve IMAGE as the default export \"\"\n"
          "  -e, --export NAME=IMAGE[,ro|,read-only|,rw][,OVERLAY-OPTION...][,description=TEXT]\n"
          "                           serve IMAGE as export NAME (repeatable)\n"
          "                           overlay=off|discard|persistent: clients write to\n"
          "                           their own differencing child, IMAGE is never written;\n"
          "                           overlay-key=identity|address (persistent: what a\n"
          "                           child belongs to), overlay-dir=DIR, overlay-max=SIZE\n"
          "  -r, --read-only          serve every export read-only\n"
          "  -C, --config FILE        settings and [export NAME] sections from an INI file\n"
          "\n"
          "Listening (default: TCP port %d on all IPv4 and IPv6 addresses):\n"
          "  -p, --port PORT          TCP port\n"
          "  -b, --bind ADDR          listen on ADDR only (repeatable)\n"
          "  -U, --unix PATH          listen on a Unix socket (no TCP unless -p/-b)\n"
          "  -s, --stdio              serve one client on stdin/stdout, then exit\n"
          "      --max-connections N  refuse clients beyond N (default %d, 0: no limit)\n"
          "      --max-connections-per-address N  refuse TCP clients beyond N from one\n"
          "                           address (default: a quarter of --max-connections)\n"
          "      --max-handshakes N   beyond N clients negotiating, close the one\n"
          "                           negotiating longest, once past a second\n"
          "                           (default: a quarter of --max-connections)\n"
          "      --handshake-timeout S  close clients still negotiating after S seconds\n"
          "                           (default %d, 0: never)\n"
          "      --payload-timeout S  close clients whose WRITE payload stops arriving\n"
          "                           for S seconds (default %d, 0: never)\n"
          "      --idle-timeout S     close clients that send no request for S seconds\n"
          "                           (default 0: never)\n"
          "      --max-inflight SIZE  stop reading from clients with requests in flight\n"
          "                           while this much request and reply data is\n"
          "                           buffered (default 128M)\n"
          "      --threads N          worker threads for image I/O (default %u)\n"
          "      --loops N            event loops serving clients, each on a thread of\n"
          "                           its own (default 1); plain (not TLS) clients\n"
          "                           move to the least busy one after the handshake\n"
          "      --write-lanes N      plain WRITEs to one export running at once\n"
          "                           (default: one per CPU, at most --threads);\n"
          "                           one while each write holds the file long\n"
          "      --no-splice          copy READ data into replies and WRITE payloads\n"
          "                           into buffers; by default large READs go from\n"
          "                           the page cache to the socket uncopied (splice),\n"
          "                           and a WRITE sent after a READ of the same bytes\n"
          "                           may show in its reply; large WRITEs go from a\n"
          "                           Unix socket into the file uncopied\n"
          "      --sparse-blocks      leave the unwritten sectors of each new block of\n"
          "                           a dynamic or differencing image as holes; by\n"
          "                           default a new block's space is reserved whole\n"
          "                           when it is allocated (faster small writes into\n"
          "                           it, contiguous on disk, but all of it used)\n"
          "  Sockets passed by systemd (LISTEN_FDS) are used instead when present.\n"
          "\n"
          "Access control and TLS:\n"
          "      --allow RULE[,RULE...]  admit only clients a rule matches (repeatable):\n"
          "                           CIDR (TCP clients), dn:GLOB (verified client\n"
          "                           certificate subject), psk:IDENTITY, uid:N, gid:N\n"
          "                           (Unix-socket clients); see ALLOW LISTS in vhdnbd(8)\n"
          "      --tls=off|on|require TLS with NBD_OPT_STARTTLS (default off)\n"
          "      --tls-certificates DIR  server-cert.pem, server-key.pem (and ca-cert.pem\n"
          "                           with --tls-verify-peer)\n"
          "      --tls-verify-peer    clients need a certificate signed by ca-cert.pem\n"
          "      --tls-psk FILE       pre-shared keys (psktool format) instead of X.509\n"
          "\n"
          "Process:\n"
          "      --check-config       check the settings, exports and TLS files, open every\n"
          "                           image read-only (no lock), print the exports, exit:\n"
          "                           0 all good, 1 not (binds, writes, starts nothing)\n"
          "      --pidfile FILE       write the process id once listening\n"
          "      --metrics-file FILE  write counters in Prometheus text format to FILE\n"
          "                           (atomically: a temporary file, then a rename)\n"
          "      --metrics-interval S rewrite it every S seconds (default %d); SIGUSR1\n"
          "                           logs a one-line summary per export\n"
          "  -v, --verbose            more messages (repeat for debugging)\n"
          "  -q, --quiet              errors only\n"
          "  -h, --help               this help\n"
          "  -V, --version            print the version\n"
          "\n"
          "Examples:\n"
          "  vhdnbd disk.vhd                        nbd://localhost\n"
          "  vhdnbd -r -p 10900 -b 127.0.0.1 disk.vhd\n"
          "  vhdnbd -U /run/vhd.sock -e sys=sys.vhd,ro -e data=data.vhd\n"
          "                                         nbd+unix:///data?socket=/run/vhd.sock\n"
          "  nbdinfo --list nbd://localhost\n",
          NBD_DEFAULT_PORT, SERVER_DEFAULT_MAX_CONNECTIONS, SERVER_DEFAULT_HANDSHAKE_TIMEOUT,
          SERVER_DEFAULT_PAYLOAD_TIMEOUT, SERVER_DEFAULT_THREADS, METRICS_DEFAULT_INTERVAL);
}

/* A command-line string, when given, replaces the configuration file's. */
static void take_string(char **setting, char **cli) {
  if (*cli) {
    free(*setting);
    *setting = *cli;
    *cli = NULL;
  }
}

/* --check-config: report, open images read-only, exit (check-config.c). */
static bool check_only;

static void __attribute__((noreturn, format(printf, 1, 2))) usage_error(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "vhdnbd: ");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, " (see vhdnbd --help)\n");
  /* A check fails with 1 whatever is wrong, as its documentation says. */
  exit(check_only ? 1 : EXIT_USAGE);
}

/* Problems with the settings as a whole: each is reported, then startup
 * stops (or the check goes on to the images, or a reload is refused). */
static unsigned settings_errors;

/* The command line, kept for settings_reparse, and the -C file in it. */
static int saved_argc;
static char **saved_argv;
static const char *config_path;
static bool reparsing; /* a reload: report problems, never exit */

static void __attribute__((format(printf, 1, 2))) setting_error(const char *fmt, ...) {
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  log_msg(LOG_LEVEL_ERR, "%s", msg);
  settings_errors++;
}

/* dn: and psk: rules match only what a TLS handshake proved: without the
 * credentials that prove it, no client could ever match them. */
static void check_identity_rules(const struct settings *s, const struct acl *a,
                                 const char *whose) {
  if (acl_has(a, ACL_DN) && (s->tls == TLS_OFF || !s->tls_certificates || !s->tls_verify_peer))
    setting_error("%s: dn: rules need --tls-certificates DIR and --tls-verify-peer "
                  "(an unverified certificate proves no DN)",
                  whose);
  if (acl_has(a, ACL_PSK) && (s->tls == TLS_OFF || !s->tls_psk))
    setting_error("%s: psk: rules need --tls-psk FILE", whose);
}

static const char *export_origin(const struct export_spec *e) {
  return e->origin ? e->origin : "the command line";
}

static bool starts_with_option(const char *s) {
  return strncmp(s, "overlay", 7) == 0 && (s[7] == '=' || s[7] == '-') ? true
         : strncmp(s, "ro", 2) == 0 ? (s[2] == '\0' || s[2] == ',')
         : strncmp(s, "rw", 2) == 0 ? (s[2] == '\0' || s[2] == ',')
         : strncmp(s, "read-only", 9) == 0 ? (s[9] == '\0' || s[9] == ',')
                                           : strncmp(s, "description=", 12) == 0;
}

/* NAME=IMAGE[,ro][,rw][,overlay...=V][,description=TEXT]; the image path may contain commas
 * as long as what follows one is not an option; description takes the rest. */
static void parse_export_arg(struct settings *s, const char *arg) {
  CLEANUP_FREE char *copy = strdup(arg);
  if (!copy)
    usage_error("out of memory");
  char *eq = strchr(copy, '=');
  if (!eq)
    usage_error("--export %s: expected NAME=IMAGE", arg);
  *eq = '\0';
  char *name = copy, *image = eq + 1, *opts = NULL;
  for (char *c = strchr(image, ','); c; c = strchr(c + 1, ',')) {
    if (starts_with_option(c + 1)) {
      *c = '\0';
      opts = c + 1;
      break;
    }
  }
  if (!*image)
    usage_error("--export %s: missing IMAGE", arg);
  bool ro = false, ro_set = false;
  const char *desc = NULL;
  struct overlay_settings ov = {0};
  while (opts && *opts) {
    if (strncmp(opts, "description=", 12) == 0) {
      desc = opts + 12;
      break;
    }
    char *next = strchr(opts, ',');
    if (next)
      *next++ = '\0';
    if (strcmp(opts, "ro") == 0 || strcmp(opts, "read-only") == 0)
      ro = ro_set = true;
    else if (strcmp(opts, "rw") == 0)
      ro = false, ro_set = true;
    else if (strncmp(opts, "overlay=", 8) == 0) {
      if (parse_overlay_mode(opts + 8, &ov.mode) < 0)
        usage_error("--export %s: overlay: expected off, discard or persistent", arg);
    } else if (strncmp(opts, "overlay-key=", 12) == 0) {
      if (parse_overlay_key(opts + 12, &ov.key) < 0)
        usage_error("--export %s: overlay-key: expected identity or address", arg);
    } else if (strncmp(opts, "overlay-dir=", 12) == 0 && opts[12]) {
      free(ov.dir);
      if (!(ov.dir = strdup(opts + 12)))
        usage_error("out of memory");
    } else if (strncmp(opts, "overlay-max=", 12) == 0) {
      if (size_parse(opts + 12, &ov.max) < 0 || ov.max == 0)
        usage_error("--export %s: overlay-max: invalid size '%s'", arg, opts + 12);
    } else
      usage_error("--export %s: unknown export option '%s'", arg, opts);
    opts = next;
  }
  if (settings_add_export(s, name, image, desc, ro, ro_set, NULL) < 0)
    usage_error("out of memory");
  s->exports[s->n_exports - 1].overlay = ov;
}

static unsigned parse_count(const char *opt, const char *v, unsigned max) {
  char *end;
  errno = 0;
  unsigned long n = strtoul(v, &end, 10);
  if (!*v || *end || errno || n > max || *v == '-')
    usage_error("%s: invalid number '%s'", opt, v);
  return (unsigned)n;
}

enum {
  OPT_MAX_CONNECTIONS = 256,
  OPT_PIDFILE,
  OPT_HANDSHAKE_TIMEOUT,
  OPT_ALLOW,
  OPT_TLS,
  OPT_TLS_CERTIFICATES,
  OPT_TLS_VERIFY_PEER,
  OPT_NO_SPLICE,
  OPT_SPARSE_BLOCKS,
  OPT_TLS_PSK,
  OPT_IDLE_TIMEOUT,
  OPT_MAX_INFLIGHT,
  OPT_THREADS,
  OPT_WRITE_LANES,
  OPT_LOOPS,
  OPT_CHECK_CONFIG,
  OPT_MAX_HANDSHAKES,
  OPT_MAX_PER_ADDRESS,
  OPT_PAYLOAD_TIMEOUT,
  OPT_METRICS_FILE,
  OPT_METRICS_INTERVAL,
};

static const struct option long_options[] = {
    {"port", required_argument, NULL, 'p'},
    {"bind", required_argument, NULL, 'b'},
    {"unix", required_argument, NULL, 'U'},
    {"read-only", no_argument, NULL, 'r'},
    {"export", required_argument, NULL, 'e'},
    {"config", required_argument, NULL, 'C'},
    {"stdio", no_argument, NULL, 's'},
    {"max-connections", required_argument, NULL, OPT_MAX_CONNECTIONS},
    {"handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT},
    {"max-handshakes", required_argument, NULL, OPT_MAX_HANDSHAKES},
    {"max-connections-per-address", required_argument, NULL, OPT_MAX_PER_ADDRESS},
    {"payload-timeout", required_argument, NULL, OPT_PAYLOAD_TIMEOUT},
    {"pidfile", required_argument, NULL, OPT_PIDFILE},
    {"allow", required_argument, NULL, OPT_ALLOW},
    {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
    {"max-inflight", required_argument, NULL, OPT_MAX_INFLIGHT},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"write-lanes", required_argument, NULL, OPT_WRITE_LANES},
    {"loops", required_argument, NULL, OPT_LOOPS},
    {"tls", required_argument, NULL, OPT_TLS},
    {"tls-certificates", required_argument, NULL, OPT_TLS_CERTIFICATES},
    {"tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY_PEER},
    {"no-splice", no_argument, NULL, OPT_NO_SPLICE},
    {"sparse-blocks", no_argument, NULL, OPT_SPARSE_BLOCKS},
    {"tls-psk", required_argument, NULL, OPT_TLS_PSK},
    {"check-config", no_argument, NULL, OPT_CHECK_CONFIG},
    {"metrics-file", required_argument, NULL, OPT_METRICS_FILE},
    {"metrics-interval", required_argument, NULL, OPT_METRICS_INTERVAL},
    {"verbose", no_argument, NULL, 'v'},
    {"quiet", no_argument, NULL, 'q'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

#define SHORT_OPTIONS ":p:b:U:re:C:svqhV"

/* --check-config decides the exit status of every error, including those of
 * options given before it: look for it before parsing anything. */
static bool wants_check_config(int argc, char **argv) {
  bool found = false;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, SHORT_OPTIONS, long_options, NULL)) != -1)
    if (c == OPT_CHECK_CONFIG)
      found = true;
  optind = 0; /* GNU getopt: start the next scan afresh */
  return found;
}

/* Command line over configuration file: scalar settings given on the command
 * line win, exports and bind addresses from both are used.  Usage errors
 * exit; errors in the configuration file and in the settings as a whole are
 * all reported and counted in settings_errors. */
static void parse_args(int argc, char **argv, struct settings *s) {
  struct settings cli = {0};
  const char *config = NULL;
  bool max_set = false, timeout_set = false, idle_set = false;
  bool handshakes_set = false, per_address_set = false, payload_set = false;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, SHORT_OPTIONS, long_options, NULL)) != -1) {
    switch (c) {
    case 'p':
      parse_count("--port", optarg, 65535);
      free(cli.port);
      cli.port = strdup(optarg);
      break;
    case 'b': {
      char **b = realloc(cli.binds, (cli.n_binds + 1) * sizeof *b);
      if (!b)
        usage_error("out of memory");
      cli.binds = b;
      cli.binds[cli.n_binds++] = strdup(optarg);
      break;
    }
    case 'U':
      free(cli.unix_path);
      cli.unix_path = strdup(optarg);
      break;
    case 'r':
      cli.readonly = true;
      break;
    case 'e':
      parse_export_arg(&cli, optarg);
      break;
    case 'C':
      config = optarg;
      config_path = optarg;
      break;
    case 's':
      cli.stdio = true;
      break;
    case OPT_MAX_CONNECTIONS:
      cli.max_connections = parse_count("--max-connections", optarg, 1000000);
      max_set = true;
      break;
    case OPT_HANDSHAKE_TIMEOUT:
      cli.handshake_timeout = parse_count("--handshake-timeout", optarg, 86400);
      timeout_set = true;
      break;
    case OPT_MAX_HANDSHAKES:
      cli.max_handshakes = parse_count("--max-handshakes", optarg, 1000000);
      handshakes_set = true;
      break;
    case OPT_MAX_PER_ADDRESS:
      cli.max_connections_per_address =
          parse_count("--max-connections-per-address", optarg, 1000000);
      per_address_set = true;
      break;
    case OPT_PAYLOAD_TIMEOUT:
      cli.payload_timeout = parse_count("--payload-timeout", optarg, 86400);
      payload_set = true;
      break;
    case OPT_IDLE_TIMEOUT:
      cli.idle_timeout = parse_count("--idle-timeout", optarg, 86400 * 7);
      idle_set = true;
      break;
    case OPT_THREADS:
      cli.threads = parse_count("--threads", optarg, SERVER_MAX_THREADS);
      if (cli.threads == 0)
        usage_error("--threads: at least 1");
      break;
    case OPT_LOOPS:
      cli.loops = parse_count("--loops", optarg, LOOPS_MAX);
      if (cli.loops == 0)
        usage_error("--loops: at least 1");
      break;
    case OPT_WRITE_LANES:
      cli.write_lanes = parse_count("--write-lanes", optarg, SERVER_MAX_WRITE_LANES);
      if (cli.write_lanes == 0)
        usage_error("--write-lanes: at least 1");
      break;
    case OPT_MAX_INFLIGHT:
      if (size_parse(optarg, &cli.max_inflight) < 0 || cli.max_inflight == 0)
        usage_error("--max-inflight: invalid size '%s'", optarg);
      break;
    case OPT_PIDFILE:
      free(cli.pidfile);
      cli.pidfile = strdup(optarg);
      break;
    case OPT_METRICS_FILE:
      free(cli.metrics_file);
      cli.metrics_file = strdup(optarg);
      break;
    case OPT_METRICS_INTERVAL:
      cli.metrics_interval = parse_count("--metrics-interval", optarg, 86400);
      if (cli.metrics_interval == 0)
        usage_error("--metrics-interval: at least 1 second");
      break;
    case OPT_ALLOW: {
      char err[256];
      if (acl_add(&cli.allow, optarg, err, sizeof err) < 0)
        usage_error("--allow: %s", err);
      break;
    }
    case OPT_TLS:
      if (parse_tls_mode(optarg, &cli.tls) < 0)
        usage_error("--tls: expected off, on or require, not '%s'", optarg);
      cli.tls_set = true;
      break;
    case OPT_TLS_CERTIFICATES:
      free(cli.tls_certificates);
      cli.tls_certificates = strdup(optarg);
      break;
    case OPT_TLS_PSK:
      free(cli.tls_psk);
      cli.tls_psk = strdup(optarg);
      break;
    case OPT_NO_SPLICE:
      cli.no_splice = true;
      break;
    case OPT_SPARSE_BLOCKS:
      cli.sparse_blocks = true;
      break;
    case OPT_TLS_VERIFY_PEER:
      cli.tls_verify_peer = true;
      break;
    case OPT_CHECK_CONFIG:
      check_only = true;
      break;
    case 'v':
      cli.verbose++;
      break;
    case 'q':
      cli.verbose--;
      break;
    case 'h':
      usage(stdout);
      exit(0);
    case 'V':
      printf("vhdnbd %s\n", PACKAGE_VERSION);
      exit(0);
    case ':':
      usage_error("option '%s' needs an argument", argv[optind - 1]);
    default:
      if (optopt)
        usage_error("unknown option '-%c'", optopt);
      usage_error("unknown option '%s'", argv[optind - 1]);
    }
  }
  if (argc - optind > 1)
    usage_error("more than one IMAGE given ('%s'); use --export NAME=IMAGE", argv[optind + 1]);

  s->max_connections = SERVER_DEFAULT_MAX_CONNECTIONS;
  s->handshake_timeout = SERVER_DEFAULT_HANDSHAKE_TIMEOUT;
  s->max_handshakes = SERVER_DERIVED;
  s->max_connections_per_address = SERVER_DERIVED;
  s->payload_timeout = SERVER_DEFAULT_PAYLOAD_TIMEOUT;
  s->max_inflight = SERVER_DEFAULT_MAX_INFLIGHT;
  s->threads = SERVER_DEFAULT_THREADS;
  s->loops = 1;
  s->metrics_interval = METRICS_DEFAULT_INTERVAL;
  if (config && reparsing && access(config, R_OK) < 0) {
    setting_error("--config %s: %s", config, strerror(errno));
    config = NULL;
  }
  if (config) {
    if (access(config, R_OK) < 0)
      usage_error("--config %s: %s", config, strerror(errno));
    int r = config_load(config, s);
    if (r == -ENOMEM)
      usage_error("out of memory");
    if (r < 0)
      settings_errors++;
  }
  if (cli.port) {
    free(s->port);
    s->port = cli.port;
    cli.port = NULL;
  }
  if (cli.n_binds) {
    for (size_t i = 0; i < s->n_binds; i++)
      free(s->binds[i]);
    free(s->binds);
    s->binds = cli.binds;
    s->n_binds = cli.n_binds;
    cli.binds = NULL;
    cli.n_binds = 0;
  }
  take_string(&s->unix_path, &cli.unix_path);
  take_string(&s->pidfile, &cli.pidfile);
  take_string(&s->metrics_file, &cli.metrics_file);
  if (cli.metrics_interval)
    s->metrics_interval = cli.metrics_interval;
  if (cli.readonly)
    s->readonly = true;
  if (cli.allow.n) {
    /* Both lists apply: a client is allowed when either names it. */
    struct acl_entry *n =
        realloc(s->allow.entries, (s->allow.n + cli.allow.n) * sizeof *n);
    if (!n)
      usage_error("out of memory");
    memcpy(n + s->allow.n, cli.allow.entries, cli.allow.n * sizeof *n);
    s->allow.entries = n;
    s->allow.n += cli.allow.n;
  }
  if (cli.tls_set)
    s->tls = cli.tls;
  take_string(&s->tls_certificates, &cli.tls_certificates);
  take_string(&s->tls_psk, &cli.tls_psk);
  if (cli.tls_verify_peer)
    s->tls_verify_peer = true;
  if (cli.no_splice)
    s->no_splice = true;
  if (cli.sparse_blocks)
    s->sparse_blocks = true;
  if (max_set)
    s->max_connections = cli.max_connections;
  if (timeout_set)
    s->handshake_timeout = cli.handshake_timeout;
  if (idle_set)
    s->idle_timeout = cli.idle_timeout;
  if (handshakes_set)
    s->max_handshakes = cli.max_handshakes;
  if (per_address_set)
    s->max_connections_per_address = cli.max_connections_per_address;
  if (payload_set)
    s->payload_timeout = cli.payload_timeout;
  /* A quarter of the connections each: one address cannot take them all,
   * and clients that never negotiate cannot keep out those that do. */
  unsigned quarter = s->max_connections ? MAX(s->max_connections / 4, 1u) : 0;
  if (s->max_handshakes == SERVER_DERIVED)
    s->max_handshakes = quarter;
  if (s->max_connections_per_address == SERVER_DERIVED)
    s->max_connections_per_address = quarter;
  if (cli.max_inflight)
    s->max_inflight = cli.max_inflight;
  if (cli.threads)
    s->threads = cli.threads;
  if (cli.write_lanes)
    s->write_lanes = cli.write_lanes;
  if (cli.loops)
    s->loops = cli.loops;
  s->stdio = cli.stdio;
  s->verbose = cli.verbose;
  if (optind < argc) {
    /* A bare IMAGE is the default export; its description is its file name. */
    CLEANUP_FREE char *copy = strdup(argv[optind]);
    if (!copy ||
        settings_add_export(s, "", argv[optind], basename(copy), false, false, NULL) < 0)
      usage_error("out of memory");
  }
  for (size_t i = 0; i < cli.n_exports; i++) {
    const struct export_spec *e = &cli.exports[i];
    if (settings_add_export(s, e->name, e->image, e->description, e->readonly,
                            e->readonly_set, NULL) < 0)
      usage_error("out of memory");
    struct overlay_settings *ov = &s->exports[s->n_exports - 1].overlay;
    *ov = e->overlay;
    if (e->overlay.dir && !(ov->dir = strdup(e->overlay.dir)))
      usage_error("out of memory");
  }
  if (cli.readonly) {
    /* -r wins over per-export settings: "serve every export read-only". */
    for (size_t i = 0; i < s->n_exports; i++)
      s->exports[i].readonly = s->exports[i].readonly_set = true;
  }
  settings_free(&cli);

  if (s->n_exports == 0 && settings_errors == 0 && reparsing)
    setting_error("nothing to serve: the configuration has no export");
  else if (s->n_exports == 0 && settings_errors == 0)
    usage_error("nothing to serve: give an IMAGE, --export NAME=IMAGE or --config FILE");
  for (size_t i = 0; i < s->n_exports; i++) {
    const struct export_spec *e = &s->exports[i];
    const char *at = e->origin ? e->origin : "", *sep = e->origin ? ": " : "";
    if (strlen(e->name) > NBD_MAX_STRING)
      setting_error("%s%sexport name longer than %u bytes", at, sep, NBD_MAX_STRING);
    if (e->description && strlen(e->description) > NBD_MAX_STRING)
      setting_error("%s%sexport '%s': description longer than %u bytes", at, sep, e->name,
                    NBD_MAX_STRING);
    for (size_t j = 0; j < i; j++)
      if (strcmp(s->exports[j].name, e->name) == 0)
        setting_error("export '%s' given twice: by %s and by %s", e->name,
                      export_origin(&s->exports[j]), export_origin(e));
    /* Read-only said once for every export counts too: an overlay would
     * take writes the administrator said no export takes. */
    if (e->overlay.mode != OVERLAY_OFF && (e->readonly_set ? e->readonly : s->readonly))
      setting_error("%s%sexport '%s': overlay = %s needs a writable export, but it is "
                    "read-only%s", at, sep, e->name, overlay_mode_name(e->overlay.mode),
                    e->readonly_set ? ""
                                    : " (read-only = yes for every export: say read-only = "
                                      "no in its section)");
    /* The check opens every image and reports this itself. */
    if (!check_only && e->image && access(e->image, F_OK) < 0)
      setting_error("%s%sexport '%s': %s: %s", at, sep, e->name, e->image, strerror(errno));
  }
  if (s->stdio && (s->unix_path || s->port || s->n_binds))
    setting_error("--stdio cannot be combined with --unix, --port or --bind");
  if (s->tls_certificates && s->tls_psk)
    setting_error("--tls-certificates and --tls-psk cannot be combined");
  if (s->tls != TLS_OFF && !s->tls_certificates && !s->tls_psk)
    setting_error("--tls=%s needs --tls-certificates DIR or --tls-psk FILE",
                  s->tls == TLS_ON ? "on" : "require");
  if (s->tls == TLS_OFF && (s->tls_certificates || s->tls_psk))
    setting_error("TLS credentials given but TLS is off: add --tls=on or --tls=require");
  if (s->tls_verify_peer && !s->tls_certificates)
    setting_error("--tls-verify-peer needs --tls-certificates DIR");
  check_identity_rules(s, &s->allow, "the global allow list");
  for (size_t i = 0; i < s->n_exports; i++) {
    char whose[600];
    snprintf(whose, sizeof whose, "export '%s': allow", s->exports[i].name);
    check_identity_rules(s, &s->exports[i].allow, whose);
  }
}

unsigned settings_reparse(struct settings *s) {
  reparsing = true;
  settings_errors = 0;
  optind = 0; /* GNU getopt: start afresh */
  parse_args(saved_argc, saved_argv, s);
  return settings_errors;
}

const char *settings_config_path(void) { return config_path; }

/* ---- lifecycle ---- */

static void close_walk_cb(uv_handle_t *h, void *arg) {
  /* The signal handles stay until the images are closed (signals_close). */
  if (!uv_is_closing(h) && h->type != UV_SIGNAL)
    uv_close(h, NULL);
}

/* Closing a signal handle gives the signal its default action back, and a
 * second SIGTERM (systemd's to the whole unit, timeout(1)'s to its process
 * group, another Ctrl-C) would then end the process while it closes the
 * images: the allocation window not given back, the pidfile left.  So
 * the handles, unreferenced (they never keep a loop alive), are closed
 * only once the images are; a signal meanwhile changes nothing. */
static void signals_close(void) {
  if (!sig_term.loop)
    return; /* never made: the server stopped before */
  uv_signal_t *sigs[] = {&sig_term, &sig_int, &sig_hup};
  for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
    if (!uv_is_closing((uv_handle_t *)sigs[i]))
      uv_close((uv_handle_t *)sigs[i], NULL);
  uv_run(server.loop, UV_RUN_DEFAULT);
}

static void on_grace_timeout(uv_timer_t *t) {
  log_msg(LOG_LEVEL_WARNING, "clients did not finish within %d s; closing them",
          SERVER_SHUTDOWN_GRACE_MS / 1000);
  conns_shutdown(&server, true);
}

static void server_shutdown(void) {
  if (server.shutting_down) {
    conns_shutdown(&server, true);
    return;
  }
  server.shutting_down = true;
  notify_stopping();
  listen_stop(&server);
  conns_shutdown(&server, false);
  uv_timer_start(&grace_timer, on_grace_timeout, SERVER_SHUTDOWN_GRACE_MS, 0);
  server_check_done(&server);
}

void server_check_done(struct server *srv) {
  if (!srv->shutting_down) {
    if (srv->cfg->stdio && srv->n_conns == 0)
      server_shutdown();
    return;
  }
  if (srv->n_conns > 0)
    return;
  /* Nothing left but our own handles: let the loop end. */
  uv_timer_stop(&grace_timer);
  if (!uv_is_closing((uv_handle_t *)&grace_timer))
    uv_close((uv_handle_t *)&grace_timer, NULL);
  guard_stop(srv);
  metrics_stop();
  loops_close_handles(loops_main());
}

/* Plain WRITEs of one export run on this many lanes at once.  One lane
 * kept the kernel's inode lock uncontended but left writes to one core;
 * two to four lanes measured 1.5-3x the IOPS of one on two CPUs (4k random
 * writes at QD16 and over four connections, bench/RESULTS.md), and on the
 * idle machine two beat four in 11 of 12 alternating pairs (cold and warm,
 * 7-20 % more IOPS): writers beyond the CPUs only wait on the inode lock
 * and on each other's wake-ups.  One per CPU, at most one per worker
 * thread, unless --write-lanes says. */
static unsigned write_lanes(const struct settings *s) {
  if (s->write_lanes)
    return MIN(s->write_lanes, s->threads);
  unsigned n = (unsigned)MAX(uv_available_parallelism(), 1u);
  return MIN(MIN(n, s->threads), SERVER_MAX_WRITE_LANES);
}

static void on_hup(uv_signal_t *h, int signum) {
  if (!server.shutting_down)
    reload_start(&server);
}

static void on_signal(uv_signal_t *h, int signum) {
  log_msg(LOG_LEVEL_NOTICE, "%s received, shutting down", strsignal(signum));
  server_shutdown();
}

int main(int argc, char **argv) {
  struct settings settings = {0};
  bool pidfile_written = false;
  log_set_program("vhdnbd");
  signal(SIGPIPE, SIG_IGN);
  check_only = wants_check_config(argc, argv);
  saved_argc = argc;
  saved_argv = argv;
  parse_args(argc, argv, &settings);
  if (check_only) {
    if (settings.verbose < 0)
      log_set_level(LOG_LEVEL_ERR);
    int status = config_check(&settings, settings_errors);
    settings_free(&settings);
    return status;
  }
  if (settings_errors) {
    settings_free(&settings);
    return EXIT_USAGE;
  }
  int level = LOG_LEVEL_NOTICE + settings.verbose;
  if (settings.verbose < 0)
    level = LOG_LEVEL_ERR; /* -q: errors only */
  if (level > LOG_LEVEL_DEBUG)
    level = LOG_LEVEL_DEBUG;
  log_set_level((enum log_level)level);

  server.cfg = &settings;
  server.loop = uv_default_loop();
  int status = 0;
  if (settings.tls != TLS_OFF) {
    char err[512];
    if (tls_creds_load(settings.tls_certificates, settings.tls_psk, settings.tls_verify_peer,
                       &server.tls, err, sizeof err) < 0) {
      log_msg(LOG_LEVEL_ERR, "TLS: %s", err);
      settings_free(&settings);
      return 1;
    }
  }
  unsigned threads = settings.threads;
  server.write_lanes = write_lanes(&settings);
  server.vhd_open_flags = settings.sparse_blocks ? VHD_OPEN_SPARSE_BLOCKS : 0;
  /* Tests turn the loop's WRITEs off to exercise the workers' path alone
   * (HACKING.md)... */
  const char *lw = getenv("VHDNBD_LOOP_WRITES");
  server.loop_writes = !(lw && strcmp(lw, "0") == 0);
  /* ...and the workers' own replies, to exercise the loop's reply path. */
  const char *dr = getenv("VHDNBD_DIRECT_REPLIES");
  server.direct_replies = !(dr && strcmp(dr, "0") == 0);
  server.splice_reads = !settings.no_splice && splice_available();
  /* ...and WRITE payloads copied, to compare with splicing them. */
  const char *sw = getenv("VHDNBD_SPLICE_WRITES");
  server.splice_writes = server.splice_reads && !(sw && strcmp(sw, "0") == 0);
  /* ...and the write lanes never narrowed to one, to compare (lanes.h). */
  const char *al = getenv("VHDNBD_ADAPTIVE_LANES");
  server.adaptive_lanes = !(al && strcmp(al, "0") == 0);
  /* ...and the workers under the default policy, to compare (workers.c). */
  const char *wb = getenv("VHDNBD_WORKER_BATCH");
  int wr = workers_start(server.loop, threads, !(wb && strcmp(wb, "0") == 0));
  if (wr < 0) {
    log_msg(LOG_LEVEL_ERR, "cannot start %u worker threads: %s", threads, strerror(-wr));
    tls_creds_free(server.tls);
    settings_free(&settings);
    return 1;
  }
  if (exports_open(&server, &settings) < 0) {
    status = 1;
    goto out;
  }
  uv_signal_init(server.loop, &sig_term);
  uv_signal_init(server.loop, &sig_int);
  uv_signal_init(server.loop, &sig_hup);
  uv_timer_init(server.loop, &grace_timer);
  /* Each loop writes its queued replies after every poll (check) and
   * before it would block again (prepare); neither keeps it alive. */
  if (loops_start(server.loop, settings.loops, settings.max_inflight) < 0) {
    status = 1;
    goto out;
  }
  guard_start(&server);
  if (metrics_start(&server) < 0) {
    log_msg(LOG_LEVEL_ERR, "metrics: out of memory");
    status = 1;
    goto out;
  }
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_start(&sig_int, on_signal, SIGINT);
  uv_signal_start(&sig_hup, on_hup, SIGHUP);
  uv_unref((uv_handle_t *)&sig_term);
  uv_unref((uv_handle_t *)&sig_int);
  uv_unref((uv_handle_t *)&sig_hup);
  if (listen_start(&server) < 0) {
    status = 1;
    server.shutting_down = true;
    listen_stop(&server);
    uv_walk(server.loop, close_walk_cb, NULL);
    uv_run(server.loop, UV_RUN_DEFAULT);
    goto out;
  }
  if (settings.pidfile && pidfile_write(settings.pidfile) < 0) {
    status = 1;
    server_shutdown();
  } else {
    pidfile_written = settings.pidfile != NULL;
    notify_ready();
  }
  uv_run(server.loop, UV_RUN_DEFAULT);
  /* Close anything left (normally nothing) so the loop can be closed. */
  uv_walk(server.loop, close_walk_cb, NULL);
  uv_run(server.loop, UV_RUN_DEFAULT);
  log_msg(LOG_LEVEL_INFO, "all clients gone, closing images");
out:
  /* The other loops, every client gone; then the workers: none may still
   * be returning from an item when the exports (and their write serials)
   * go. */
  loops_stop();
  workers_stop();
  metrics_free();
  if (exports_close(&server) < 0 || server.overlay_close_failed)
    status = 1;
  listen_cleanup(&server);
  if (pidfile_written) /* last: its removal means the images are closed */
    pidfile_remove(settings.pidfile);
  signals_close();
  uv_loop_close(server.loop);
  bufpool_drain();
  tls_creds_free(server.tls);
  settings_free(&settings);
  return status;
}
