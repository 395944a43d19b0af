// The `forge` executable: parses the command line and turns library errors into one message,
// a hint and an exit code. Subcommands live in cli/cmd_<verb>.cpp.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>

#include "command.h"
#include <forge/core/error.h>

namespace forge::cli {
std::vector<CommandSetup>& command_setups() {
    static std::vector<CommandSetup> setups;
    return setups;
}
} // namespace forge::cli

int main(int argc, char** argv) {
    CLI::App app{"forge: train, run and serve transformer language models"};
    app.require_subcommand(1);
    for (auto& setup : forge::cli::command_setups())
        setup(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    } catch (const forge::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        if (!e.hint().empty())
            std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
