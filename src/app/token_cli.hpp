#pragma once
// `antigravity token ...`: service tokens and signing keys from the command line, working on the
// database directly (docs/services-and-tokens.md, "CLI").
#include <CLI/CLI.hpp>

namespace ag::cli {

struct TokenCommands;
// Adds the `token` subcommand tree to `app`; the returned object holds the parsed options.
TokenCommands* add_token_commands(CLI::App& app);
// True when a `token` subcommand was given on the command line.
bool token_command_selected(const TokenCommands* t);
// Runs the selected command: 0 on success, 2 on a validation error, 1 otherwise.
int run_token_command(const TokenCommands* t);

}  // namespace ag::cli
