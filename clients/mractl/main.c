/*
 * main.c - entry point of mractl, the command-line tool of mrad: looks the
 * subcommand up in one table (name, function, one-line help) and runs it.
 * Each subcommand lives in its own file and parses its own options.
 * MRAD_VERSION comes from the file VERSION through the Makefile.
 */
#include <stdio.h>
#include <string.h>

#include "clients/mractl/mractl.h"
#include "clients/mractl/remote.h"

static int cmd_help(int argc, char **argv);

static const struct {
    const char *name;
    mractl_cmd_fn fn;
    const char *help;
} commands[] = {
    {"run", mractl_cmd_run_any,
     "compute one request body here: run --local FILE|- [--threads N]\n"
     "           or send it to a server: run --url URL FILE|-"},
    {"random", mractl_cmd_random,
     "write a random request body: random --shape B,H,Nq,D\n"
     "           [--kv-len Nk] [--causal] [-o FILE]"},
    {"kv", mractl_cmd_kv,
     "sessions (keys and values kept in a server):\n"
     "           kv create|append|get|delete|attend [--kv ID] [--url URL]"},
    {"health", mractl_cmd_health, "GET /healthz of a server [--url URL]"},
    {"info", mractl_cmd_info, "GET /v1/info of a server [--url URL]"},
    {"metrics", mractl_cmd_metrics, "GET /metrics of a server [--url URL]"},
    {"help", cmd_help, "list the subcommands"},
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: mractl COMMAND [OPTIONS]\n\ncommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`mractl COMMAND --help` describes a command's options; "
               "`mractl --version`\nprints the version.\n"
               "Exit status: 0 success, 1 internal or I/O failure, 2 bad "
               "request or usage.\n");
}

static int cmd_help(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    usage(stdout);
    return MRACTL_EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return MRACTL_EXIT_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return cmd_help(argc - 1, argv + 1);
    if (strcmp(argv[1], "--version") == 0) {
        printf("mractl %s\n", MRAD_VERSION);
        return MRACTL_EXIT_OK;
    }
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "mractl: unknown command \"%s\"\n\n", argv[1]);
    usage(stderr);
    return MRACTL_EXIT_USAGE;
}
