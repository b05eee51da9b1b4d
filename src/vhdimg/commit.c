/* commit.c: `vhdimg commit`, a differencing disk's sectors written into its
 * parent (the engine's vhd_commit: see its crash-safe order in
 * src/vhd/commit.c). */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <unistd.h>

#include "vhdimg.h"

void usage_commit(FILE *f) {
  fprintf(f,
          "Usage: vhdimg commit [--remove] [--force] [-p] [--json] CHILD\n"
          "\n"
          "Writes the sectors the differencing image CHILD holds into its parent\n"
          "(the immediate one, which may be differencing too), like qemu-img commit.\n"
          "CHILD is then left as an empty differencing image over the parent, with\n"
          "the same unique id, so it reads as before; --remove deletes it instead.\n"
          "A crash at any point leaves CHILD reading as before; run commit again to\n"
          "finish.  The parent's content changes for any other reader of it, so the\n"
          "commit is refused when the parent is locked by another process (served,\n"
          "or open elsewhere), has no write permission, or other differencing\n"
          "images beside the parent or CHILD name it as their parent (a heuristic:\n"
          "only *.vhd and *.avhd files in those two directories are looked at).\n"
          "\n"
          "  -r, --remove    delete CHILD after the commit\n"
          "  -f, --force     commit although other children of the parent were found\n"
          "                  (or, with --remove, children of CHILD); lists them and\n"
          "                  what cannot be known\n"
          "  -p, --progress  show a progress bar (when stderr is a terminal)\n"
          "      --json      print the result as one JSON object: child, parent,\n"
          "                  bytes and sectors committed, removed, the parent's new\n"
          "                  timestamp, other children found\n"
          "  -h, --help      show this help\n");
}

int cmd_commit(int argc, char **argv) {
  enum { OPT_JSON = 256 };
  static const struct option longopts[] = {
      {"remove", no_argument, NULL, 'r'},   {"force", no_argument, NULL, 'f'},
      {"progress", no_argument, NULL, 'p'}, {"json", no_argument, NULL, OPT_JSON},
      {"help", no_argument, NULL, 'h'},     {NULL, 0, NULL, 0},
  };
  struct warn_list warns = {.print = true};
  struct vhd_commit_opts o = {.warn = warn_collect, .opaque = &warns};
  bool progress = false, json = false;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":rfph", longopts, NULL)) != -1) {
    switch (c) {
    case 'r': o.remove = true; break;
    case 'f': o.force = true; break;
    case 'p': progress = true; break;
    case OPT_JSON: json = true; break;
    case 'h': usage_commit(stdout); return VHDIMG_EXIT_OK;
    default: return option_error("commit", c, argv);
    }
  }
  if (argc - optind < 1)
    return usage_error("commit", "missing CHILD");
  if (argc - optind > 1)
    return usage_error("commit", "unexpected argument '%s'", argv[optind + 1]);
  const char *child = argv[optind];
  if (progress && isatty(STDERR_FILENO))
    o.progress = progress_cb;

  struct vhd_commit_result res;
  struct vhd_err err = {{0}};
  int r = vhd_commit(child, &o, &res, &err);
  warn_list_free(&warns);
  if (r < 0) {
    print_vhd_error(r, &err);
    return VHDIMG_EXIT_FAILURE;
  }
  if (json) {
    char ts[64];
    printf("{\"child\": ");
    json_put_string(stdout, child);
    printf(", \"parent\": ");
    json_put_string(stdout, res.parent);
    printf(", \"bytes\": %" PRIu64 ", \"sectors\": %" PRIu64
           ", \"removed\": %s, \"parent-timestamp\": ",
           res.bytes, res.bytes / VHD_SECTOR_SIZE, o.remove ? "true" : "false");
    json_put_string(stdout, vhd_time_format(res.parent_timestamp, ts, sizeof ts));
    printf(", \"other-children\": %u}\n", res.other_children);
  } else {
    /* Which file took the data is worth seeing: the chain's search chose
     * it. */
    printf("%s: %" PRIu64 " bytes committed into %s%s\n", child, res.bytes, res.parent,
           o.remove ? "; removed" : "");
  }
  return VHDIMG_EXIT_OK;
}
