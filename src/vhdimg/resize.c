/* resize.c: `vhdimg resize`, a front end to vhd_resize. */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <unistd.h>

#include "vhdimg.h"

void usage_resize(FILE *f) {
  fprintf(f,
          "Usage: vhdimg resize [--shrink] [--exact] [--ignore-saved-state] [-p] [--json]\n"
          "                     FILE SIZE\n"
          "\n"
          "Gives a fixed, dynamic or differencing image the virtual size SIZE,\n"
          "rounded up to the next CHS geometry as create does.  Growing adds\n"
          "space that reads as zeros; the image must not be in use (served or\n"
          "open elsewhere).  Shrinking needs --shrink and is refused when data\n"
          "lies past the new end (the first such offset is named).\n"
          "\n"
          "      --shrink       allow a SIZE smaller than the image\n"
          "      --exact        keep SIZE exactly instead of rounding it up to\n"
          "                     the next CHS geometry\n"
          "      --ignore-saved-state\n"
          "                     resize even though the footer's saved-state flag\n"
          "                     is set (a saved virtual machine depends on the\n"
          "                     disk; the VHD format forbids it)\n"
          "  -p, --progress     show the progress of blocks moved (when stderr is\n"
          "                     a terminal)\n"
          "      --json         print the result as one JSON object: file,\n"
          "                     old-size, new-size, blocks-moved, bat-moved\n"
          "  -h, --help         show this help\n");
}

int cmd_resize(int argc, char **argv) {
  enum { OPT_SHRINK = 256, OPT_EXACT, OPT_JSON, OPT_SAVED };
  static const struct option longopts[] = {
      {"shrink", no_argument, NULL, OPT_SHRINK},
      {"exact", no_argument, NULL, OPT_EXACT},
      {"json", no_argument, NULL, OPT_JSON},
      {"ignore-saved-state", no_argument, NULL, OPT_SAVED},
      {"progress", no_argument, NULL, 'p'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct warn_list warns = {.print = true};
  struct vhd_resize_opts opts = {.warn = warn_collect, .opaque = &warns};
  bool progress = false, json = false;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":ph", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_SHRINK:
      opts.shrink = true;
      break;
    case OPT_EXACT:
      opts.exact_size = true;
      break;
    case OPT_JSON:
      json = true;
      break;
    case OPT_SAVED:
      opts.ignore_saved_state = true;
      break;
    case 'p':
      progress = true;
      break;
    case 'h':
      usage_resize(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("resize", c, argv);
    }
  }
  int nargs = argc - optind;
  if (nargs < 1)
    return usage_error("resize", "missing FILE");
  if (nargs < 2)
    return usage_error("resize", "missing SIZE");
  if (nargs > 2)
    return usage_error("resize", "unexpected argument '%s'", argv[optind + 2]);
  int r = parse_size_arg("resize", "size", argv[optind + 1], &opts.size);
  if (r)
    return r;
  if (opts.size == 0)
    return usage_error("resize", "size must not be zero");
  if (progress && isatty(STDERR_FILENO))
    opts.progress = progress_cb;

  struct vhd_err err = {{0}};
  struct vhd_resize_result res;
  r = vhd_resize(argv[optind], &opts, &res, &err);
  warn_list_free(&warns);
  if (r < 0) {
    print_vhd_error(r, &err);
    return VHDIMG_EXIT_FAILURE;
  }
  if (json) {
    printf("{\"file\": ");
    json_put_string(stdout, argv[optind]);
    printf(", \"old-size\": %" PRIu64 ", \"new-size\": %" PRIu64 ", \"blocks-moved\": %" PRIu32
           ", \"bat-moved\": %s}\n",
           res.old_size, res.new_size, res.blocks_moved, res.bat_moved ? "true" : "false");
  } else {
    printf("%s: virtual size %" PRIu64 " bytes\n", argv[optind], res.new_size);
  }
  return VHDIMG_EXIT_OK;
}
