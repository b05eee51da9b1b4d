#include "config.h"

#include "log.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum log_level max_level = LOG_LEVEL_NOTICE;
static const char *program = "vhdnbd";
static int prefix_mode = -1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void log_set_level(enum log_level max) { max_level = max; }
enum log_level log_get_level(void) { return max_level; }
void log_set_program(const char *name) { program = name; }
void log_set_priority_prefix(int mode) { prefix_mode = mode; }

/* Length of the valid UTF-8 sequence at p (1 to 4 bytes, not a C1 control
 * character), or 0. */
static size_t utf8_printable_len(const unsigned char *p) {
  unsigned char c = p[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xbf; /* allowed range of the second byte */
  if (c >= 0xc2 && c <= 0xdf)
    n = 2;
  else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0)
      lo = 0xa0; /* overlong */
    if (c == 0xed)
      hi = 0x9f; /* surrogates */
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0)
      lo = 0x90;
    if (c == 0xf4)
      hi = 0x8f; /* past U+10FFFF */
  } else
    return 0;
  if (p[1] < lo || p[1] > hi)
    return 0;
  for (size_t i = 2; i < n; i++)
    if (p[i] < 0x80 || p[i] > 0xbf)
      return 0;
  if (c == 0xc2 && p[1] <= 0x9f)
    return 0; /* U+0080..U+009F: C1 controls */
  return n;
}

size_t log_escape(char *out, size_t size, const char *in) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *p = (const unsigned char *)in;
  size_t o = 0;
  if (size == 0)
    return 0;
  while (*p) {
    size_t n = 1;
    bool escape;
    if (*p >= 0x80)
      escape = (n = utf8_printable_len(p)) == 0;
    else
      escape = *p < 0x20 || *p == 0x7f;
    if (escape)
      n = 1;
    size_t need = escape ? 4 : n;
    if (o + need >= size)
      break;
    if (escape) {
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[*p >> 4];
      out[o++] = hex[*p & 15];
    } else {
      memcpy(out + o, p, n);
      o += n;
    }
    p += n;
  }
  out[o] = '\0';
  return o;
}

static int use_prefix(void) {
  if (prefix_mode < 0)
    prefix_mode = getenv("JOURNAL_STREAM") != NULL;
  return prefix_mode;
}

void log_msg(enum log_level level, const char *fmt, ...) {
  if (level > max_level)
    return;
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  char safe[4 * sizeof line];
  log_escape(safe, sizeof safe, line);
  /* One fprintf per line, under a lock, so worker-thread messages never interleave. */
  pthread_mutex_lock(&log_lock);
  if (use_prefix())
    fprintf(stderr, "<%d>%s\n", (int)level, safe);
  else
    fprintf(stderr, "%s: %s%s\n", program,
            level <= LOG_LEVEL_ERR ? "error: " : level == LOG_LEVEL_WARNING ? "warning: " : "",
            safe);
  pthread_mutex_unlock(&log_lock);
}
