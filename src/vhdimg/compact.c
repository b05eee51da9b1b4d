/* compact.c: `vhdimg compact`, a front end to vhd_compact. */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <unistd.h>

#include "vhdimg.h"

void usage_compact(FILE *f) {
  fprintf(f,
          "Usage: vhdimg compact [--dry-run] [--ignore-saved-state] [--json] [-p] FILE\n"
          "\n"
          "Gives back the space of a dynamic or differencing image's blocks that\n"
          "hold only zeros (in a differencing image, only where the parent reads\n"
          "zeros too), and moves blocks down into free space so that the file\n"
          "gets shorter, like Optimize-VHD; parent locator data that lies past\n"
          "the blocks moves down after them.  The image must not be in use.\n"
          "Prints the file size before and after, the bytes reclaimed and the\n"
          "blocks and locators moved.\n"
          "\n"
          "  -n, --dry-run      only say what would be reclaimed\n"
          "      --ignore-saved-state\n"
          "                     compact even though the footer's saved-state flag\n"
          "                     is set (a saved virtual machine depends on the\n"
          "                     disk; the VHD format forbids it)\n"
          "      --json         print the result as one JSON object\n"
          "  -p, --progress     show the progress (when stderr is a terminal)\n"
          "  -h, --help         show this help\n");
}

int cmd_compact(int argc, char **argv) {
  enum { OPT_JSON = 256, OPT_SAVED };
  static const struct option longopts[] = {
      {"dry-run", no_argument, NULL, 'n'},
      {"json", no_argument, NULL, OPT_JSON},
      {"ignore-saved-state", no_argument, NULL, OPT_SAVED},
      {"progress", no_argument, NULL, 'p'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct warn_list warns = {.print = true};
  struct vhd_compact_opts opts = {.warn = warn_collect, .opaque = &warns};
  bool progress = false, json = false;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":nph", longopts, NULL)) != -1) {
    switch (c) {
    case 'n':
      opts.dry_run = true;
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
      usage_compact(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("compact", c, argv);
    }
  }
  int nargs = argc - optind;
  if (nargs < 1)
    return usage_error("compact", "missing FILE");
  if (nargs > 1)
    return usage_error("compact", "unexpected argument '%s'", argv[optind + 1]);
  if (progress && isatty(STDERR_FILENO))
    opts.progress = progress_cb;

  const char *file = argv[optind];
  struct vhd_err err = {{0}};
  struct vhd_compact_result res;
  int r = vhd_compact(file, &opts, &res, &err);
  warn_list_free(&warns);
  if (r < 0) {
    print_vhd_error(r, &err);
    return VHDIMG_EXIT_FAILURE;
  }
  uint64_t gain = res.file_size_before - res.file_size_after;
  if (json) {
    printf("{\"file\": ");
    json_put_string(stdout, file);
    printf(", \"dry-run\": %s, \"file-size-before\": %" PRIu64 ", \"file-size-after\": %" PRIu64
           ", \"bytes-reclaimed\": %" PRIu64 ", \"blocks-freed\": %" PRIu32
           ", \"blocks-moved\": %" PRIu32 ", \"blocks-kept-batmap\": %" PRIu32
           ", \"locators-moved\": %" PRIu32 "}\n",
           opts.dry_run ? "true" : "false", res.file_size_before, res.file_size_after, gain,
           res.blocks_freed, res.blocks_moved, res.blocks_kept_batmap, res.locators_moved);
  } else {
    printf("%s: %s %" PRIu64 " bytes (file size %" PRIu64 " -> %" PRIu64
           "; blocks of zeros freed: %" PRIu32 ", blocks moved: %" PRIu32 ")\n",
           file, opts.dry_run ? "would reclaim" : "reclaimed", gain, res.file_size_before,
           res.file_size_after, res.blocks_freed, res.blocks_moved);
    if (res.locators_moved)
      printf("%s: %s the data of %" PRIu32 " parent locators down after the blocks\n", file,
             opts.dry_run ? "would move" : "moved", res.locators_moved);
    if (res.blocks_kept_batmap)
      printf("%s: %" PRIu32 " blocks of zeros kept: Xen's batmap marks them fully written\n",
             file, res.blocks_kept_batmap);
  }
  return VHDIMG_EXIT_OK;
}
