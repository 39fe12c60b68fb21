#pragma once
// `antigravity login` and `antigravity logout`: this CLI signs in to a control plane with the
// device flow (docs/auth.md, "Device sign-in"), like `gh auth login`, and keeps the device
// session's tokens in a file only the user can read.
#include <CLI/CLI.hpp>

namespace ag::cli {

struct LoginCommands;
LoginCommands* add_login_commands(CLI::App& app);
bool login_command_selected(const LoginCommands* l);
// 0 on success; 1 on a failure (printed), 2 on bad usage.
int run_login_command(const LoginCommands* l);

}  // namespace ag::cli
