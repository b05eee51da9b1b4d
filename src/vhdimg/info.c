/* info.c: `vhdimg info`, an image's metadata and its parent chain.
 *
 * It opens read-only without the lock so it works on an image being served.
 * A differencing image whose parent cannot be opened is still shown (opened
 * again with VHD_OPEN_NOPARENT) and the parent problem is reported; the exit
 * status is then 1 so scripts notice. */
#include "config.h"

#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "size.h"
#include "vhdimg.h"

void usage_info(FILE *f) {
  fprintf(f,
          "Usage: vhdimg info [--json] FILE\n"
          "\n"
          "Shows the type, virtual size (the current-size and CHS figures both),\n"
          "creator, UUID, timestamps, block layout and parent chain of a VHD image.\n"
          "Exits 1 when the image, or a parent of it, cannot be opened.\n"
          "\n"
          "      --json   print one JSON object\n"
          "  -h, --help   show this help\n");
}

struct info_ctx {
  const char *file;
  vhd_t *vhd;
  struct vhd_info info;
  const char *parent_error; /* NULL when the chain opened */
  struct warn_list *warnings;
};

static void creator_text(const struct vhd_info *in, char *app, size_t applen, char *os,
                         size_t oslen) {
  fourcc_format(in->creator_app, app, applen);
  char oscode[4];
  for (int i = 0; i < 4; i++)
    oscode[i] = (char)(in->creator_os >> (24 - 8 * i));
  fourcc_format(oscode, os, oslen);
}

static void print_human(const struct info_ctx *ctx) {
  const struct vhd_info *in = &ctx->info;
  char b1[64], b2[64], app[32], os[32], u[37];

  printf("image: %s\n", ctx->file);
  printf("type: %s\n", vhd_type_name(in->type));
  printf("virtual size: %s (%" PRIu64 " bytes)\n",
         size_format(in->virtual_size, b1, sizeof b1), in->virtual_size);
  printf("size used: %s\n", in->virtual_size == in->current_size
                                 ? (in->current_size == in->chs_size ? "current size (= CHS size)"
                                                                     : "current size")
                             : in->virtual_size == in->chs_size ? "CHS size"
                                                                : "other");
  printf("current size: %" PRIu64 " bytes\n", in->current_size);
  printf("original size: %" PRIu64 " bytes\n", in->original_size);
  printf("CHS size: %" PRIu64 " bytes (cylinders/heads/sectors %u/%u/%u)\n", in->chs_size,
         in->cylinders, in->heads, in->sectors_per_track);
  creator_text(in, app, sizeof app, os, sizeof os);
  printf("creator: \"%s\" version %u.%u (0x%08" PRIx32 ") on \"%s\"\n", app,
         in->creator_version >> 16, in->creator_version & 0xffff, in->creator_version, os);
  printf("uuid: %s\n", uuid_format(in->uuid, u));
  printf("timestamp: %s\n", vhd_time_format(in->timestamp, b2, sizeof b2));
  printf("features: 0x%08" PRIx32 "\n", in->features);
  printf("saved state: %s\n", in->saved_state ? "yes" : "no");
  printf("file size: %" PRIu64 " bytes\n", in->file_size);
  if (in->footer_copy_used)
    printf("footer: trailing footer damaged, the copy at offset 0 was used\n");
  if (in->type != VHD_TYPE_FIXED) {
    printf("header offset: %" PRIu64 "\n", in->header_offset);
    printf("BAT offset: %" PRIu64 "\n", in->bat_offset);
    printf("block size: %s (%" PRIu32 " bytes)\n", size_format(in->block_size, b1, sizeof b1),
           in->block_size);
    printf("allocated blocks: %" PRIu32 " of %" PRIu32 "\n", in->allocated_blocks,
           in->max_table_entries);
    if (in->xen_batmap)
      printf("Xen batmap: at offset %" PRIu64 ", %" PRIu32 " blocks marked full, checksum %s\n",
             in->batmap_offset, in->batmap_full_blocks, in->batmap_checksum_ok ? "ok" : "wrong");
  }
  if (in->type == VHD_TYPE_DIFFERENCING) {
    printf("parent name: %s\n", in->parent_name);
    printf("parent uuid: %s\n", uuid_format(in->parent_uuid, u));
    printf("parent timestamp: %s\n", vhd_time_format(in->parent_timestamp, b2, sizeof b2));
    printf("parent chain:\n");
    int depth = 1;
    for (vhd_t *p = vhd_parent(ctx->vhd); p; p = vhd_parent(p), depth++) {
      struct vhd_info pi;
      vhd_get_info(p, &pi);
      printf("  %d: %s (%s, uuid %s)\n", depth, vhd_path(p), vhd_type_name(pi.type),
             uuid_format(pi.uuid, u));
    }
    if (ctx->parent_error)
      printf("  parent problem: %s\n", ctx->parent_error);
  }
  for (size_t i = 0; i < ctx->warnings->n; i++)
    printf("warning: %s\n", ctx->warnings->msgs[i]);
}

static void json_key(const char *key, bool *first) {
  printf("%s\n  ", *first ? "" : ",");
  *first = false;
  json_put_string(stdout, key);
  fputs(": ", stdout);
}
static void json_str(const char *key, const char *val, bool *first) {
  json_key(key, first);
  json_put_string(stdout, val);
}
static void json_u64(const char *key, uint64_t val, bool *first) {
  json_key(key, first);
  printf("%" PRIu64, val);
}
static void json_bool(const char *key, bool val, bool *first) {
  json_key(key, first);
  fputs(val ? "true" : "false", stdout);
}

static void print_json(const struct info_ctx *ctx) {
  const struct vhd_info *in = &ctx->info;
  char b[64], app[32], os[32], u[37];
  bool first = true;

  printf("{");
  json_str("filename", ctx->file, &first);
  json_str("type", vhd_type_name(in->type), &first);
  json_u64("virtual-size", in->virtual_size, &first);
  json_u64("current-size", in->current_size, &first);
  json_u64("original-size", in->original_size, &first);
  json_u64("chs-size", in->chs_size, &first);
  json_key("geometry", &first);
  printf("{\"cylinders\": %u, \"heads\": %u, \"sectors\": %u}", in->cylinders, in->heads,
         in->sectors_per_track);
  creator_text(in, app, sizeof app, os, sizeof os);
  json_str("creator-app", app, &first);
  json_u64("creator-version", in->creator_version, &first);
  json_str("creator-os", os, &first);
  json_str("uuid", uuid_format(in->uuid, u), &first);
  json_u64("timestamp", in->timestamp, &first);
  json_str("timestamp-utc", vhd_time_format(in->timestamp, b, sizeof b), &first);
  json_u64("features", in->features, &first);
  json_bool("saved-state", in->saved_state, &first);
  json_u64("file-size", in->file_size, &first);
  json_bool("footer-copy-used", in->footer_copy_used, &first);
  if (in->type != VHD_TYPE_FIXED) {
    json_u64("header-offset", in->header_offset, &first);
    json_u64("bat-offset", in->bat_offset, &first);
    json_u64("block-size", in->block_size, &first);
    json_u64("max-table-entries", in->max_table_entries, &first);
    json_u64("allocated-blocks", in->allocated_blocks, &first);
    if (in->xen_batmap) {
      json_u64("batmap-offset", in->batmap_offset, &first);
      json_u64("batmap-full-blocks", in->batmap_full_blocks, &first);
      json_bool("batmap-checksum-ok", in->batmap_checksum_ok, &first);
    }
  }
  if (in->type == VHD_TYPE_DIFFERENCING) {
    json_str("parent-name", in->parent_name, &first);
    json_str("parent-uuid", uuid_format(in->parent_uuid, u), &first);
    json_u64("parent-timestamp", in->parent_timestamp, &first);
    json_key("parent-chain", &first);
    printf("[");
    int depth = 1;
    for (vhd_t *p = vhd_parent(ctx->vhd); p; p = vhd_parent(p), depth++) {
      struct vhd_info pi;
      vhd_get_info(p, &pi);
      printf("%s\n    {\"depth\": %d, \"filename\": ", depth > 1 ? "," : "", depth);
      json_put_string(stdout, vhd_path(p));
      printf(", \"type\": \"%s\", \"uuid\": \"%s\", \"virtual-size\": %" PRIu64 "}",
             vhd_type_name(pi.type), uuid_format(pi.uuid, u), pi.virtual_size);
    }
    printf("%s]", depth > 1 ? "\n  " : "");
    if (ctx->parent_error)
      json_str("parent-error", ctx->parent_error, &first);
  }
  json_key("warnings", &first);
  printf("[");
  for (size_t i = 0; i < ctx->warnings->n; i++) {
    if (i)
      printf(", ");
    json_put_string(stdout, ctx->warnings->msgs[i]);
  }
  printf("]\n}\n");
}

int cmd_info(int argc, char **argv) {
  enum { OPT_JSON = 256 };
  static const struct option longopts[] = {
      {"json", no_argument, NULL, OPT_JSON},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  bool json = false;
  int c;

  opterr = 0;
  while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
    switch (c) {
    case OPT_JSON:
      json = true;
      break;
    case 'h':
      usage_info(stdout);
      return VHDIMG_EXIT_OK;
    default:
      return option_error("info", c, argv);
    }
  }
  if (argc - optind < 1)
    return usage_error("info", "missing FILE");
  if (argc - optind > 1)
    return usage_error("info", "unexpected argument '%s'", argv[optind + 1]);

  struct warn_list warnings = {0};
  struct info_ctx ctx = {.file = argv[optind], .warnings = &warnings};
  struct vhd_open_opts oo = {
      .flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
      .warn = warn_collect,
      .warn_opaque = &warnings,
  };
  struct vhd_err err = {{0}}, perr = {{0}};
  int r = vhd_open(ctx.file, &oo, &ctx.vhd, &err);
  if (r < 0) {
    /* Maybe only the parent is at fault: show the child anyway. */
    warn_list_free(&warnings);
    oo.flags |= VHD_OPEN_NOPARENT;
    int r2 = vhd_open(ctx.file, &oo, &ctx.vhd, &perr);
    if (r2 < 0 || vhd_get_type(ctx.vhd) != VHD_TYPE_DIFFERENCING) {
      if (r2 >= 0)
        vhd_close(ctx.vhd, NULL);
      warn_list_free(&warnings);
      print_vhd_error(r, &err);
      return VHDIMG_EXIT_FAILURE;
    }
    ctx.parent_error = err.msg[0] ? err.msg : strerror(-r);
  }
  vhd_get_info(ctx.vhd, &ctx.info);
  if (json)
    print_json(&ctx);
  else
    print_human(&ctx);
  fflush(stdout);
  vhd_close(ctx.vhd, NULL);
  warn_list_free(&warnings);
  if (ctx.parent_error) {
    print_error("%s", ctx.parent_error);
    return VHDIMG_EXIT_FAILURE;
  }
  return VHDIMG_EXIT_OK;
}
