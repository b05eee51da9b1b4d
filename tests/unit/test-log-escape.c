/* log_escape: every log line stays one line of printable text whatever a
 * client put into it, and printable UTF-8 stays readable. */
#include "config.h"

#include <string.h>

#include "check.h"
#include "log.h"

static void expect(const char *in, const char *want) {
  char out[256];
  size_t n = log_escape(out, sizeof out, in);
  if (strcmp(out, want) != 0 || n != strlen(want)) {
    fprintf(stderr, "log_escape(\"%s\") = \"%s\" (%zu), expected \"%s\"\n", in, out, n, want);
    failures++;
  }
}

int main(void) {
  expect("export disk0", "export disk0");
  /* A forged second line and a terminal escape sequence. */
  expect("a\nvhdnbd: error: forged", "a\\x0avhdnbd: error: forged");
  expect("\x1b[31mred\r", "\\x1b[31mred\\x0d");
  expect("tab\there\x7f", "tab\\x09here\\x7f");
  /* Backslashes stay: Windows parent paths are logged as they are. */
  expect("C:\\disks\\base.vhd", "C:\\disks\\base.vhd");
  /* Printable UTF-8 is kept: é, €, 😀. */
  expect("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  /* Not UTF-8: lone continuation, truncated sequence, overlong, surrogate,
   * past U+10FFFF, and the C1 control U+009B (a terminal's CSI). */
  expect("\x80x", "\\x80x");
  expect("\xe2\x82", "\\xe2\\x82");
  expect("\xc0\xaf", "\\xc0\\xaf");
  expect("\xed\xa0\x80", "\\xed\\xa0\\x80");
  expect("\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80");
  expect("\xc2\x9b", "\\xc2\\x9b");
  /* Truncation never splits an escape and always terminates. */
  char small[6];
  CHECK_EQ(log_escape(small, sizeof small, "ab\ncd"), 2);
  CHECK(strcmp(small, "ab") == 0);
  CHECK_EQ(log_escape(small, 1, "abc"), 0);
  CHECK(small[0] == '\0');
  return check_finish("log_escape");
}
