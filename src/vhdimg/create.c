/* create.c: `vhdimg create`, a thin front end to vhd_create. */
#include "config.h"

#include <getopt.h>
#include <string.h>

#include "vhdimg.h"

void usage_create(FILE *f) {
  fprintf(f,
          "Usage: vhdimg create [-t fixed|dynamic|differencing] [-b PARENT]\n"
          "                     [--block-size N] [--exact] FILE [SIZE]\n"
          "\n"
          "Creates a VHD image.  The type defaults to dynamic, or to differencing\n"
          "when -b is given; SIZE is required unless the image is differencing\n"
          "(a child takes its parent's size).\n"
          "\n"
          "  -t, --type TYPE      fixed, dynamic or differencing\n"
          "  -b, --parent PARENT  parent image of a differencing image\n"
          "      --block-size N   block size of a dynamic/differencing image\n"
          "                       (a power of two, default 2M; under 4K QEMU\n"
          "                       and libvhdi cannot read the image: a warning)\n"
          "      --exact          keep SIZE exactly instead of rounding it up to\n"
          "                       the next CHS geometry\n"
          "  -h, --help           show this help\n");
}

static int parse_type(const char *s, enum vhd_type *t) {
  if (strcmp(s, "fixed") == 0)
    *t = VHD_TYPE_FIXED;
  else if (strcmp(s, "dynamic") == 0)
    *t = VHD_TYPE_DYNAMIC;
  else if (strcmp(s, "differencing") == 0 || strcmp(s, "diff") == 0)
    *t = VHD_TYPE_DIFFERENCING;
  else
    return -1;
  return 0;
}

int cmd_create(int argc, char **argv) {
  enum { OPT_BLOCK_SIZE = 256, OPT_EXACT };
  static const struct option longopts[] = {
      {"type", required_argument, NULL, 't'},
      {"parent", required_argument, NULL, 'b'},
      {"block-size", required_argument, NULL, OPT_BLOCK_SIZE},
      {"exact", no_argument, NULL, OPT_EXACT},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  struct vhd_create_opts opts = {0};
  bool type_given = false;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":t:b:h", longopts, NULL)) != -1) {
    switch (c) {
    case 't':
      if (parse_type(optarg, &opts.type) < 0)
        return usage_error("create", "unknown image type '%s' (fixed, dynamic, differencing)",
                           optarg);
      type_given = true;
      break;
    case 'b':
      opts.parent = optarg;
      break;
    case OPT_BLOCK_SIZE: {
      uint64_t bs;
      int r = parse_size_arg("create", "block size", optarg, &bs);
      if (r)
        return r;
      /* The engine's limits, checked here so that a bad value is a usage
       * error (exit 2), as in vhdimg convert. */
      if (bs < VHD_MIN_BLOCK_SIZE || bs > VHD_MAX_BLOCK_SIZE || (bs & (bs - 1)))
        return usage_error("create", "block size '%s' is not a power of two from 512 to 256M",
                           optarg);
      opts.block_size = (uint32_t)bs;
      break;
    }
    case OPT_EXACT:
      opts.exact_size = true;
      break;
    case 'h':
      usage_create(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("create", c, argv);
    }
  }
  if (!type_given)
    opts.type = opts.parent ? VHD_TYPE_DIFFERENCING : VHD_TYPE_DYNAMIC;
  if (opts.type == VHD_TYPE_DIFFERENCING && !opts.parent)
    return usage_error("create", "a differencing image needs a parent (-b PARENT)");
  if (opts.type != VHD_TYPE_DIFFERENCING && opts.parent)
    return usage_error("create", "-b PARENT is only for differencing images");
  if (opts.type == VHD_TYPE_FIXED && opts.block_size)
    return usage_error("create", "a fixed image has no block size");

  int nargs = argc - optind;
  if (nargs < 1)
    return usage_error("create", "missing FILE");
  const char *file = argv[optind];
  if (opts.type == VHD_TYPE_DIFFERENCING) {
    if (nargs > 1)
      return usage_error("create", "a differencing image takes its size from the parent: "
                                   "drop SIZE");
  } else {
    if (nargs < 2)
      return usage_error("create", "missing SIZE");
    if (nargs > 2)
      return usage_error("create", "unexpected argument '%s'", argv[optind + 2]);
    int r = parse_size_arg("create", "size", argv[optind + 1], &opts.size);
    if (r)
      return r;
    if (opts.size == 0)
      return usage_error("create", "size must not be zero");
    if (opts.size > VHD_MAX_VIRTUAL_SIZE)
      return usage_error("create", "size '%s' is larger than 2040G, the largest a VHD holds",
                         argv[optind + 1]);
  }

  struct vhd_err err = {{0}};
  int r = vhd_create(file, &opts, &err);
  if (r < 0) {
    print_vhd_error(r, &err);
    return VHDIMG_EXIT_FAILURE;
  }
  if (opts.type != VHD_TYPE_FIXED)
    warn_small_blocks(file, opts.block_size);
  return VHDIMG_EXIT_OK;
}
