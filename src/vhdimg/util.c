/* util.c: error printing, argument parsing and text formatting shared by the
 * subcommands. */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "size.h"
#include "vhdimg.h"

#define VHD_EPOCH_UNIX 946684800 /* 2000-01-01 00:00:00 UTC */

int usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "vhdimg%s%s: ", cmd ? " " : "", cmd ? cmd : "");
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry 'vhdimg %s%s--help' for more information.\n", cmd ? cmd : "",
          cmd ? " " : "");
  return VHDIMG_EXIT_USAGE;
}

void print_error(const char *fmt, ...) {
  va_list ap;
  fputs("vhdimg: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

int parse_size_arg(const char *cmd, const char *what, const char *s, uint64_t *out) {
  int r = size_parse(s, out);
  if (r == -ERANGE)
    return usage_error(cmd, "%s '%s' is too large", what, s);
  if (r < 0)
    return usage_error(cmd, "%s '%s' is not a size (a number with an optional K, M, G or T)",
                       what, s);
  return 0;
}

void json_put_string(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\b': fputs("\\b", f); break;
    case '\f': fputs("\\f", f); break;
    case '\n': fputs("\\n", f); break;
    case '\r': fputs("\\r", f); break;
    case '\t': fputs("\\t", f); break;
    default:
      /* Control bytes must be escaped; bytes >= 0x80 pass as UTF-8 (file names
       * and parent names come from the engine as UTF-8). */
      if (*p < 0x20 || *p == 0x7f)
        fprintf(f, "\\u%04x", *p);
      else
        fputc(*p, f);
    }
  }
  fputc('"', f);
}

const char *vhd_time_format(uint32_t ts, char *buf, size_t len) {
  time_t t = (time_t)ts + VHD_EPOCH_UNIX;
  struct tm tm;
  if (!gmtime_r(&t, &tm) || strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
    snprintf(buf, len, "%" PRIu32, ts);
  return buf;
}

const char *uuid_format(const uint8_t u[16], char *buf) {
  snprintf(buf, 37,
           "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0],
           u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
           u[14], u[15]);
  return buf;
}

const char *fourcc_format(const char code[4], char *buf, size_t len) {
  size_t o = 0;
  buf[0] = '\0';
  for (int i = 0; i < 4 && o + 5 < len; i++) {
    unsigned char c = (unsigned char)code[i];
    if (c == 0)
      o += (size_t)snprintf(buf + o, len - o, "\\0");
    else if (c < 0x20 || c >= 0x7f || c == '\\')
      o += (size_t)snprintf(buf + o, len - o, "\\x%02x", c);
    else
      buf[o++] = (char)c, buf[o] = '\0';
  }
  return buf;
}

const char *vhd_type_name(enum vhd_type t) {
  switch (t) {
  case VHD_TYPE_FIXED: return "fixed";
  case VHD_TYPE_DYNAMIC: return "dynamic";
  case VHD_TYPE_DIFFERENCING: return "differencing";
  }
  return "unknown";
}

void warn_collect(void *opaque, const char *msg) {
  struct warn_list *w = opaque;
  /* A command may open an image twice (with and without its chain): a
   * finding is said once. */
  for (size_t i = 0; i < w->n; i++)
    if (strcmp(w->msgs[i], msg) == 0)
      return;
  if (w->print)
    fprintf(stderr, "vhdimg: warning: %s\n", msg);
  char **n = realloc(w->msgs, (w->n + 1) * sizeof *n);
  if (!n)
    return;
  w->msgs = n;
  w->msgs[w->n] = strdup(msg);
  if (w->msgs[w->n])
    w->n++;
}

void warn_list_free(struct warn_list *w) {
  for (size_t i = 0; i < w->n; i++)
    free(w->msgs[i]);
  free(w->msgs);
  w->msgs = NULL;
  w->n = 0;
}

int option_error(const char *cmd, int c, char **argv) {
  /* optopt is set for short options; for long ones the word is argv[optind-1]. */
  const char *word = argv[optind - 1];
  char shortopt[3] = {'-', (char)optopt, '\0'};
  if (optopt && (strncmp(word, "--", 2) != 0))
    word = shortopt;
  if (c == ':')
    return usage_error(cmd, "option '%s' needs an argument", word);
  return usage_error(cmd, "unknown option '%s'", word);
}

void print_vhd_error(int r, const struct vhd_err *err) {
  if (err && err->msg[0])
    print_error("%s", err->msg);
  else
    print_error("%s", strerror(-r));
}

void progress_bar(uint64_t done, uint64_t total) {
  double pct = total ? 100.0 * (double)done / (double)total : 100.0;
  fprintf(stderr, "\r    (%6.2f/100%%)", pct);
  if (done >= total)
    fputc('\n', stderr);
  fflush(stderr);
}

void progress_cb(void *opaque, uint64_t done, uint64_t total) {
  (void)opaque;
  progress_bar(done, total);
}

/* Found by experiment (test-vhdimg-small-blocks.sh): QEMU 7.2 takes the
 * bitmap of such a block as 0 bytes and reads its data from the wrong
 * offset without a word; libvhdi 20210425 refuses the bitmap size. */
void warn_small_blocks(const char *file, uint32_t block_size) {
  if (block_size == 0 || block_size >= VHDIMG_READERS_MIN_BLOCK)
    return;
  fprintf(stderr,
          "vhdimg: warning: %s: blocks of %" PRIu32 " bytes (under 4 KiB) are valid VHD, but "
          "QEMU (qemu-img, qemu-nbd -f vpc) reads them wrongly without an error and libvhdi "
          "refuses them; vhdimg and vhdnbd read them\n",
          file, block_size);
}
