/* rebase.c: `vhdimg rebase`, a differencing disk pointed at another parent
 * (the engine's vhd_rebase; the header rewrite is in src/vhd/relink.c). */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <unistd.h>

#include "vhdimg.h"

void usage_rebase(FILE *f) {
  fprintf(f,
          "Usage: vhdimg rebase [-u] [-p] [--json] -b NEWPARENT CHILD\n"
          "\n"
          "Makes NEWPARENT the parent of the differencing image CHILD, like\n"
          "qemu-img rebase.  By default CHILD keeps its content: every sector it\n"
          "does not hold where the old parent chain and NEWPARENT differ is first\n"
          "copied into CHILD.  Then the parent's unique id, timestamp and name and\n"
          "the W2ru (relative) and W2ku (absolute) parent locators are rewritten.\n"
          "A crash at any point leaves CHILD reading as before.  Images in use by\n"
          "another process are refused.\n"
          "\n"
          "  -b, --parent NEWPARENT  the new parent image\n"
          "  -u, --unsafe            only rewrite the parent's identity and locators,\n"
          "                          without reading the old parent (for a parent that\n"
          "                          was moved or renamed; content is not kept)\n"
          "  -p, --progress          show a progress bar (when stderr is a terminal)\n"
          "      --json              print the result as one JSON object: child,\n"
          "                          parent, bytes and sectors copied, mode (safe or\n"
          "                          unsafe), unsafe\n"
          "  -h, --help              show this help\n");
}

int cmd_rebase(int argc, char **argv) {
  enum { OPT_JSON = 256 };
  static const struct option longopts[] = {
      {"parent", required_argument, NULL, 'b'}, {"unsafe", no_argument, NULL, 'u'},
      {"progress", no_argument, NULL, 'p'},     {"json", no_argument, NULL, OPT_JSON},
      {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
  };
  struct warn_list warns = {.print = true};
  struct vhd_rebase_opts o = {.warn = warn_collect, .opaque = &warns};
  bool progress = false, json = false;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, ":b:uph", longopts, NULL)) != -1) {
    switch (c) {
    case 'b': o.new_parent = optarg; break;
    case 'u': o.unsafe = true; break;
    case 'p': progress = true; break;
    case OPT_JSON: json = true; break;
    case 'h': usage_rebase(stdout); return VHDIMG_EXIT_OK;
    default: return option_error("rebase", c, argv);
    }
  }
  if (!o.new_parent)
    return usage_error("rebase", "missing -b NEWPARENT");
  if (argc - optind < 1)
    return usage_error("rebase", "missing CHILD");
  if (argc - optind > 1)
    return usage_error("rebase", "unexpected argument '%s'", argv[optind + 1]);
  const char *child = argv[optind];
  if (progress && isatty(STDERR_FILENO))
    o.progress = progress_cb;

  struct vhd_rebase_result res;
  struct vhd_err err = {{0}};
  int r = vhd_rebase(child, &o, &res, &err);
  warn_list_free(&warns);
  if (r < 0) {
    print_vhd_error(r, &err);
    if (r == -ENOENT && !o.unsafe)
      print_error("the old parent is needed to keep the content; if it was moved or renamed, "
                  "-u only rewrites the parent's identity and locators");
    return VHDIMG_EXIT_FAILURE;
  }
  if (json) {
    printf("{\"child\": ");
    json_put_string(stdout, child);
    printf(", \"parent\": ");
    json_put_string(stdout, o.new_parent);
    printf(", \"bytes\": %" PRIu64 ", \"sectors\": %" PRIu64 ", \"mode\": \"%s\", \"unsafe\": %s}\n",
           res.bytes, res.bytes / VHD_SECTOR_SIZE, o.unsafe ? "unsafe" : "safe",
           o.unsafe ? "true" : "false");
  }
  return VHDIMG_EXIT_OK;
}
