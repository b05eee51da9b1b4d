/* test-size.c: size_parse and size_format, the human sizes of the command
 * lines ("--size 10G") and of vhdimg info. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "size.h"

static int failures;

static void expect_parse(const char *s, int want_r, uint64_t want) {
  uint64_t v = 0xdeadbeef;
  int r = size_parse(s, &v);
  if (r != want_r || (r == 0 && v != want)) {
    fprintf(stderr, "FAIL size_parse(\"%s\") = %d, %" PRIu64 "; expected %d, %" PRIu64 "\n", s, r,
            v, want_r, want);
    failures++;
  } else if (r != 0 && v != 0xdeadbeef) {
    fprintf(stderr, "FAIL size_parse(\"%s\") failed but wrote %" PRIu64 "\n", s, v);
    failures++;
  }
}

static void expect_format(uint64_t bytes, const char *want) {
  char buf[64];
  memset(buf, 'x', sizeof buf);
  const char *r = size_format(bytes, buf, sizeof buf);
  if (r != buf || strcmp(buf, want) != 0) {
    fprintf(stderr, "FAIL size_format(%" PRIu64 ") = \"%s\"; expected \"%s\"\n", bytes, buf, want);
    failures++;
  }
}

int main(void) {
  expect_parse("0", 0, 0);
  expect_parse("512", 0, 512);
  expect_parse("1k", 0, 1024);
  expect_parse("1K", 0, 1024);
  expect_parse("1KiB", 0, 1024);
  expect_parse("1kib", 0, 1024);
  expect_parse("1KB", 0, 1024);
  expect_parse("3M", 0, UINT64_C(3) << 20);
  expect_parse("10G", 0, UINT64_C(10) << 30);
  expect_parse("2T", 0, UINT64_C(2) << 40);
  expect_parse("2040G", 0, UINT64_C(2040) << 30);
  expect_parse("5B", 0, 5);
  expect_parse("5b", 0, 5);
  expect_parse("18446744073709551615", 0, UINT64_MAX);
  expect_parse("16777215T", 0, UINT64_C(16777215) << 40);
  expect_parse("007", 0, 7);

  expect_parse("18446744073709551616", -ERANGE, 0);
  expect_parse("99999999999999999999999", -ERANGE, 0);
  expect_parse("16777216T", -ERANGE, 0);
  expect_parse("17179869184G", -ERANGE, 0);

  expect_parse("", -EINVAL, 0);
  expect_parse("G", -EINVAL, 0);
  expect_parse("abc", -EINVAL, 0);
  expect_parse("-1", -EINVAL, 0);
  expect_parse("+1", -EINVAL, 0);
  expect_parse(" 1", -EINVAL, 0);
  expect_parse("1 ", -EINVAL, 0);
  expect_parse("1.5M", -EINVAL, 0);
  expect_parse("10X", -EINVAL, 0);
  expect_parse("10GiBx", -EINVAL, 0);
  expect_parse("10GG", -EINVAL, 0);
  expect_parse("5Bx", -EINVAL, 0);
  expect_parse("5BiB", -EINVAL, 0);
  expect_parse("0x10", -EINVAL, 0);
  uint64_t v;
  if (size_parse(NULL, &v) != -EINVAL) {
    fprintf(stderr, "FAIL size_parse(NULL) is not -EINVAL\n");
    failures++;
  }

  expect_format(0, "0 bytes");
  expect_format(1023, "1023 bytes");
  expect_format(1024, "1 KiB");
  expect_format(1536, "1.50 KiB");
  expect_format(UINT64_C(3) << 20, "3 MiB");
  expect_format(UINT64_C(2) << 30, "2 GiB");
  expect_format(UINT64_C(2147991552), "2.00 GiB");
  expect_format(UINT64_C(1) << 40, "1 TiB");
  expect_format(UINT64_C(5) << 50, "5 PiB");
  expect_format(UINT64_MAX, "16384 PiB");

  /* A short buffer truncates and stays NUL-terminated. */
  char small[5];
  memset(small, 'x', sizeof small);
  size_format(UINT64_C(2) << 30, small, sizeof small);
  if (strlen(small) != 4 || strncmp(small, "2 Gi", 4) != 0) {
    fprintf(stderr, "FAIL size_format into 5 bytes gave \"%.5s\"\n", small);
    failures++;
  }

  /* Whatever size_parse accepts with a suffix round-trips through shifts. */
  static const char *units = "KMGT";
  for (unsigned u = 0; u < 4; u++)
    for (uint64_t n = 1; n < 5000; n += 97) {
      char s[64];
      snprintf(s, sizeof s, "%" PRIu64 "%c", n, units[u]);
      expect_parse(s, 0, n << (10 * (u + 1)));
    }

  if (failures) {
    fprintf(stderr, "%d failures\n", failures);
    return 1;
  }
  printf("ok size_parse and size_format\n");
  return 0;
}
