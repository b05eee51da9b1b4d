/* check.c: `vhdimg check [--repair]`, a front end to vhd_check.
 *
 * Exit codes (as qemu-img check's, with leaks and warnings sharing 3):
 *   0 the image is clean (with --repair: everything found was repaired)
 *   1 corruption found and not repaired
 *   2 bad arguments, or the image could not be examined at all
 *   3 only leaks or warnings (harmless) remain
 * After a repair the image is checked again read-only, so the status describes
 * the image as it is now, not what the repair pass believed it fixed. */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "vhdimg.h"

#define CHECK_EXIT_CORRUPT 1
#define CHECK_EXIT_ERROR 2
#define CHECK_EXIT_LEAKS 3

void usage_check(FILE *f) {
  fprintf(f,
          "Usage: vhdimg check [--repair] FILE\n"
          "\n"
          "Checks a VHD image's metadata (footers, header, BAT, blocks, parent) and\n"
          "prints one line per finding.\n"
          "\n"
          "  -r, --repair  fix what can be fixed (unused space before the footer\n"
          "                that holds only zeros and old footers, a damaged\n"
          "                trailing footer...) and print what was done; bytes\n"
          "                that may be another tool's are never changed\n"
          "  -h, --help    show this help\n"
          "\n"
          "Exit status: 0 clean (with --repair: everything found was repaired),\n"
          "1 corruption found and not repaired, 2 bad arguments or the image cannot\n"
          "be opened, 3 only leaks or warnings.\n");
}

struct report_ctx {
  const char *prefix;
  unsigned lines;
};

static void report_line(void *opaque, const char *level, const char *msg) {
  struct report_ctx *rc = opaque;
  printf("%s%s: %s\n", rc->prefix, level ? level : "info", msg);
  rc->lines++;
}

static int run_check(const char *file, bool repair, const char *prefix) {
  struct report_ctx rc = {.prefix = prefix};
  struct vhd_check_opts opts = {.repair = repair, .report = report_line, .opaque = &rc};
  struct vhd_err err = {{0}};
  int r = vhd_check(file, &opts, &err);
  fflush(stdout);
  if (r < 0)
    print_vhd_error(r, &err);
  return r;
}

static int exit_status(int bits) {
  if (bits & VHD_CHECK_CORRUPT)
    return CHECK_EXIT_CORRUPT;
  if (bits & (VHD_CHECK_LEAKS | VHD_CHECK_WARNINGS))
    return CHECK_EXIT_LEAKS;
  return VHDIMG_EXIT_OK;
}

static void summary(int bits) {
  if (bits & VHD_CHECK_CORRUPT)
    printf("The image is corrupt.\n");
  else if (bits & VHD_CHECK_LEAKS)
    printf("The image has leaked space (harmless; --repair reclaims what holds no data).\n");
  else if (bits & VHD_CHECK_WARNINGS)
    printf("The image is consistent, with warnings.\n");
  else
    printf("No errors were found on the image.\n");
}

int cmd_check(int argc, char **argv) {
  static const struct option longopts[] = {
      {"repair", no_argument, NULL, 'r'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  bool repair = false;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":rh", longopts, NULL)) != -1) {
    switch (c) {
    case 'r':
      repair = true;
      break;
    case 'h':
      usage_check(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("check", c, argv);
    }
  }
  if (argc - optind < 1)
    return usage_error("check", "missing FILE");
  if (argc - optind > 1)
    return usage_error("check", "unexpected argument '%s'", argv[optind + 1]);
  const char *file = argv[optind];

  int bits = run_check(file, repair, "");
  if (bits < 0)
    return CHECK_EXIT_ERROR;
  if (!repair || !(bits & VHD_CHECK_REPAIRED)) {
    summary(bits);
    return exit_status(bits);
  }
  printf("The image was repaired; checking it again:\n");
  fflush(stdout);
  int after = run_check(file, false, "  ");
  if (after < 0)
    return CHECK_EXIT_ERROR;
  summary(after);
  return exit_status(after);
}
