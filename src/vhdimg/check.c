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

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "vhdimg.h"

#define CHECK_EXIT_CORRUPT 1
#define CHECK_EXIT_ERROR 2
#define CHECK_EXIT_LEAKS 3

void usage_check(FILE *f) {
  fprintf(f,
          "Usage: vhdimg check [--repair] [--json] FILE\n"
          "\n"
          "Checks a VHD image's metadata (footers, header, BAT, blocks, parent) and\n"
          "prints one line per finding.\n"
          "\n"
          "  -r, --repair  fix what can be fixed (unused space before the footer\n"
          "                that holds only zeros and old footers, a damaged\n"
          "                trailing footer...) and print what was done; bytes\n"
          "                that may be another tool's are never changed\n"
          "      --json    print one JSON object: filename, findings (level,\n"
          "                message), corrupt, leaks, warnings, repaired, result\n"
          "                and, after a repair, the check of the result\n"
          "  -h, --help    show this help\n"
          "\n"
          "Exit status: 0 clean (with --repair: everything found was repaired),\n"
          "1 corruption found and not repaired, 2 bad arguments or the image cannot\n"
          "be opened, 3 only leaks or warnings.\n");
}

struct report_ctx {
  const char *prefix;
  unsigned lines;
  FILE *json; /* when set, findings go there as JSON array elements */
};

static void report_line(void *opaque, const char *level, const char *msg) {
  struct report_ctx *rc = opaque;
  if (rc->json) {
    fprintf(rc->json, "%s\n    {\"level\": ", rc->lines ? "," : "");
    json_put_string(rc->json, level ? level : "info");
    fprintf(rc->json, ", \"message\": ");
    json_put_string(rc->json, msg);
    fprintf(rc->json, "}");
  } else {
    printf("%s%s: %s\n", rc->prefix, level ? level : "info", msg);
  }
  rc->lines++;
}

/* With findings, they are collected there as a JSON array (held back so that
 * a check that fails prints no JSON at all). */
static int run_check(const char *file, bool repair, const char *prefix, char **findings) {
  struct report_ctx rc = {.prefix = prefix};
  struct vhd_check_opts opts = {.repair = repair, .report = report_line, .opaque = &rc};
  struct vhd_err err = {{0}};
  size_t len = 0;
  if (findings) {
    *findings = NULL;
    if (!(rc.json = open_memstream(findings, &len))) {
      print_error("out of memory");
      return -ENOMEM;
    }
    fputc('[', rc.json);
  }
  int r = vhd_check(file, &opts, &err);
  if (rc.json) {
    fprintf(rc.json, "%s]", rc.lines ? "\n  " : "");
    if (fclose(rc.json) != 0 && r >= 0) {
      print_error("out of memory");
      r = -ENOMEM;
    }
  }
  fflush(stdout);
  if (r < 0)
    print_vhd_error(r, &err);
  return r;
}

static const char *result_name(int bits) {
  return bits & VHD_CHECK_CORRUPT    ? "corrupt"
         : bits & VHD_CHECK_LEAKS    ? "leaks"
         : bits & VHD_CHECK_WARNINGS ? "warnings"
                                     : "clean";
}

static void json_bits(int bits) {
  printf("\"corrupt\": %s, \"leaks\": %s, \"warnings\": %s",
         bits & VHD_CHECK_CORRUPT ? "true" : "false", bits & VHD_CHECK_LEAKS ? "true" : "false",
         bits & VHD_CHECK_WARNINGS ? "true" : "false");
}

/* One object; `after` (the re-check of a repaired image) may be NULL. */
static void print_json(const char *file, int bits, const char *findings, int after_bits,
                       const char *after) {
  printf("{\n  \"filename\": ");
  json_put_string(stdout, file);
  printf(",\n  \"findings\": %s,\n  ", findings);
  json_bits(bits);
  printf(",\n  \"repaired\": %s", bits & VHD_CHECK_REPAIRED ? "true" : "false");
  if (after) {
    printf(",\n  \"after-repair\": {\"findings\": %s, ", after);
    json_bits(after_bits);
    printf("}");
  }
  printf(",\n  \"result\": \"%s\"\n}\n", result_name(after ? after_bits : bits));
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

static int check_json(const char *file, bool repair) {
  char *findings = NULL, *after = NULL;
  int bits = run_check(file, repair, "", &findings), after_bits = 0;
  if (bits >= 0 && repair && (bits & VHD_CHECK_REPAIRED))
    after_bits = run_check(file, false, "", &after);
  if (bits >= 0 && after_bits >= 0)
    print_json(file, bits, findings, after_bits, after);
  free(findings);
  free(after);
  if (bits < 0 || after_bits < 0)
    return CHECK_EXIT_ERROR;
  return exit_status(after ? after_bits : bits);
}

int cmd_check(int argc, char **argv) {
  enum { OPT_JSON = 256 };
  static const struct option longopts[] = {
      {"repair", no_argument, NULL, 'r'},
      {"json", no_argument, NULL, OPT_JSON},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  bool repair = false, json = false;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":rh", longopts, NULL)) != -1) {
    switch (c) {
    case 'r':
      repair = true;
      break;
    case OPT_JSON:
      json = true;
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
  if (json)
    return check_json(file, repair);

  int bits = run_check(file, repair, "", NULL);
  if (bits < 0)
    return CHECK_EXIT_ERROR;
  if (!repair || !(bits & VHD_CHECK_REPAIRED)) {
    summary(bits);
    return exit_status(bits);
  }
  printf("The image was repaired; checking it again:\n");
  fflush(stdout);
  int after = run_check(file, false, "  ", NULL);
  if (after < 0)
    return CHECK_EXIT_ERROR;
  summary(after);
  return exit_status(after);
}
