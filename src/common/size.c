#include "config.h"

#include "size.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

int size_parse(const char *s, uint64_t *out) {
  if (!s || !isdigit((unsigned char)*s))
    return -EINVAL;
  uint64_t v = 0;
  while (isdigit((unsigned char)*s)) {
    unsigned d = (unsigned)(*s++ - '0');
    if (v > (UINT64_MAX - d) / 10)
      return -ERANGE;
    v = v * 10 + d;
  }
  unsigned shift = 0;
  if (*s) {
    switch (toupper((unsigned char)*s)) {
    case 'B': shift = 0; break;
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    case 'T': shift = 40; break;
    default: return -EINVAL;
    }
    const char *rest = s + 1;
    if (shift && *rest && strcasecmp(rest, "iB") != 0 && strcasecmp(rest, "B") != 0)
      return -EINVAL;
    if (!shift && *rest)
      return -EINVAL;
  }
  if (shift && v > (UINT64_MAX >> shift))
    return -ERANGE;
  *out = v << shift;
  return 0;
}

const char *size_format(uint64_t bytes, char *buf, size_t len) {
  static const char *units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"};
  unsigned u = 0;
  double v = (double)bytes;
  while (v >= 1024 && u + 1 < sizeof units / sizeof units[0]) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf(buf, len, "%llu bytes", (unsigned long long)bytes);
  else if (v == (double)(uint64_t)v)
    snprintf(buf, len, "%llu %s", (unsigned long long)v, units[u]);
  else
    snprintf(buf, len, "%.2f %s", v, units[u]);
  return buf;
}
