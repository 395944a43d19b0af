// The CLI's subcommand registry: each cli/cmd_<verb>.cpp adds its subcommand(s) to the root
// app through FORGE_CLI_COMMAND, so main.cpp never changes when a verb is added.
#pragma once

#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

namespace forge::cli {

using CommandSetup = std::function<void(CLI::App& root)>;

std::vector<CommandSetup>& command_setups();

struct CommandRegistrar {
    explicit CommandRegistrar(CommandSetup setup) { command_setups().push_back(std::move(setup)); }
};

} // namespace forge::cli

#define FORGE_CLI_CONCAT_(a, b) a##b
#define FORGE_CLI_CONCAT(a, b) FORGE_CLI_CONCAT_(a, b)
/// FORGE_CLI_COMMAND([](CLI::App& root) { auto* cmd = root.add_subcommand(...); ... });
#define FORGE_CLI_COMMAND(...)                                                                     \
    static ::forge::cli::CommandRegistrar FORGE_CLI_CONCAT(forge_cli_registrar_,                   \
                                                           __LINE__)(__VA_ARGS__)
