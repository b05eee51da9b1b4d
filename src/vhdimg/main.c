/* main.c: vhdimg, the image tool: dispatches to one subcommand per file. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "vhdimg.h"

static const struct vhdimg_cmd commands[] = {
    {"create", "create a fixed, dynamic or differencing image", cmd_create, usage_create},
    {"info", "show an image's metadata and parent chain", cmd_info, usage_info},
    {"check", "check an image's consistency, optionally repair it", cmd_check, usage_check},
    {"map", "show which ranges hold data and where", cmd_map, usage_map},
    {"convert", "convert an image or a raw disk to raw, fixed or dynamic", cmd_convert,
     usage_convert},
    {"compare", "compare the contents of two images", cmd_compare, usage_compare},
    {"resize", "grow or shrink an image's virtual size", cmd_resize, usage_resize},
    {"compact", "give back the space of zero blocks and gaps", cmd_compact, usage_compact},
    {"commit", "write a differencing image's data into its parent", cmd_commit, usage_commit},
    {"rebase", "point a differencing image at another parent", cmd_rebase, usage_rebase},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f) {
  fprintf(f,
          "Usage: vhdimg COMMAND [OPTIONS] ARGS...\n"
          "       vhdimg help COMMAND | vhdimg COMMAND --help\n"
          "       vhdimg --help | -V, --version\n"
          "\n"
          "Commands:\n");
  for (size_t i = 0; i < N_COMMANDS; i++)
    fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
  fprintf(f,
          "\n"
          "Sizes take an optional K, M, G or T suffix (powers of 1024).\n"
          "Exit status: 0 success, 1 failure, 2 bad arguments (check and compare:\n"
          "see 'vhdimg help check' and 'vhdimg help compare').\n");
}

static const struct vhdimg_cmd *find_command(const char *name) {
  for (size_t i = 0; i < N_COMMANDS; i++)
    if (strcmp(commands[i].name, name) == 0)
      return &commands[i];
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2)
    return usage_error(NULL, "missing command");
  const char *arg = argv[1];
  if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
    usage(stdout);
    return VHDIMG_EXIT_OK;
  }
  if (strcmp(arg, "--version") == 0 || strcmp(arg, "-V") == 0) {
    printf("vhdimg %s\n", PACKAGE_VERSION);
    return VHDIMG_EXIT_OK;
  }
  if (strcmp(arg, "help") == 0) {
    if (argc == 2) {
      usage(stdout);
      return VHDIMG_EXIT_OK;
    }
    if (argc > 3)
      return usage_error(NULL, "help takes one command name");
    const struct vhdimg_cmd *c = find_command(argv[2]);
    if (!c)
      return usage_error(NULL, "unknown command '%s'", argv[2]);
    c->usage(stdout);
    return VHDIMG_EXIT_OK;
  }
  if (arg[0] == '-')
    return usage_error(NULL, "unknown option '%s'", arg);
  const struct vhdimg_cmd *c = find_command(arg);
  if (!c)
    return usage_error(NULL, "unknown command '%s'", arg);
  return c->run(argc - 1, argv + 1);
}
