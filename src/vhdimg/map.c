/* map.c: `vhdimg map`, which ranges of the virtual disk hold data and where,
 * in the shape of `qemu-img map` (human) and `qemu-img map --output=json`. */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>

#include "vhdimg.h"

void usage_map(FILE *f) {
  fprintf(f,
          "Usage: vhdimg map [--json] FILE\n"
          "\n"
          "Lists the extents of the virtual disk.  The human output shows data\n"
          "extents only (Offset, Length, Mapped to, File); --json lists the whole\n"
          "disk as objects {start, length, depth, present, zero, data, offset}, as\n"
          "qemu-img map --output=json does.\n"
          "\n"
          "      --json   JSON output\n"
          "  -h, --help   show this help\n");
}

struct map_ctx {
  vhd_t *vhd;
  int chain_len; /* levels, the image itself included */
  bool json;
  unsigned count;
};

static const char *level_path(vhd_t *vhd, int depth) {
  for (int i = 0; i < depth && vhd; i++)
    vhd = vhd_parent(vhd);
  return vhd ? vhd_path(vhd) : "?";
}

static int map_extent(void *opaque, const struct vhd_extent *ext) {
  struct map_ctx *m = opaque;
  bool data = ext->flags & VHD_MAP_DATA;
  if (!m->json) {
    if (data)
      printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", ext->offset, ext->length,
             ext->file_offset, level_path(m->vhd, ext->depth));
    m->count++;
    return 0;
  }
  /* Like qemu: a range no level holds is reported at the bottom of the chain,
   * present (the bottom reads it as zeros) and zero. */
  int depth = ext->depth >= 0 ? ext->depth : m->chain_len - 1;
  printf("%s{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %d, "
         "\"present\": true, \"zero\": %s, \"data\": %s",
         m->count ? ",\n" : "", ext->offset, ext->length, depth,
         (ext->flags & VHD_MAP_ZERO) ? "true" : "false", data ? "true" : "false");
  if (data)
    printf(", \"offset\": %" PRIu64, ext->file_offset);
  printf("}");
  m->count++;
  return 0;
}

int cmd_map(int argc, char **argv) {
  enum { OPT_JSON = 256 };
  static const struct option longopts[] = {
      {"json", no_argument, NULL, OPT_JSON},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct map_ctx m = {0};
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_JSON:
      m.json = true;
      break;
    case 'h':
      usage_map(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("map", c, argv);
    }
  }
  if (argc - optind < 1)
    return usage_error("map", "missing FILE");
  if (argc - optind > 1)
    return usage_error("map", "unexpected argument '%s'", argv[optind + 1]);
  const char *file = argv[optind];

  struct warn_list warnings = {.print = true};
  struct vhd_open_opts oo = {
      .flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
      .warn = warn_collect,
      .warn_opaque = &warnings,
  };
  struct vhd_err err = {{0}};
  int r = vhd_open(file, &oo, &m.vhd, &err);
  warn_list_free(&warnings);
  if (r < 0) {
    print_vhd_error(r, &err);
    return VHDIMG_EXIT_FAILURE;
  }
  for (vhd_t *p = m.vhd; p; p = vhd_parent(p))
    m.chain_len++;

  if (m.json)
    printf("[");
  else
    printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
  r = vhd_map(m.vhd, 0, vhd_virtual_size(m.vhd), map_extent, &m, &err);
  if (m.json)
    printf("]\n");
  fflush(stdout);
  vhd_close(m.vhd, NULL);
  if (r < 0) {
    print_vhd_error(r, &err);
    return VHDIMG_EXIT_FAILURE;
  }
  return VHDIMG_EXIT_OK;
}
