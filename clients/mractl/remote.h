/*
 * remote.h - the server-facing subcommands of mractl (remote.c, random.c):
 * `run --url`, `random`, `health`, `info`, `metrics`.  Same signature and
 * exit statuses as every subcommand (mractl.h).
 */
#ifndef MRAD_MRACTL_REMOTE_H
#define MRAD_MRACTL_REMOTE_H

/* `mractl run`: with --url sends the body to a server
 * (mractl_cmd_run_remote), otherwise runs it here (mractl_cmd_run). */
int mractl_cmd_run_any(int argc, char **argv);
/* `mractl run --url URL [--api-key-file F] [--timeout S] FILE`: POSTs a
 * request body and writes the answer body to stdout; an error answer goes
 * to stderr as the server's JSON error, exit 2 for 4xx and 1 otherwise. */
int mractl_cmd_run_remote(int argc, char **argv);
/* `mractl health|info|metrics [--url URL] [--api-key-file F]`: prints the
 * endpoint's body; exit 0 on 200, 1 otherwise. */
int mractl_cmd_health(int argc, char **argv);
int mractl_cmd_info(int argc, char **argv);
int mractl_cmd_metrics(int argc, char **argv);
/* `mractl random --shape B,H,Nq,D [--kv-len Nk] [...]`: writes a random
 * request body. */
int mractl_cmd_random(int argc, char **argv);

#endif /* MRAD_MRACTL_REMOTE_H */
