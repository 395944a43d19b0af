// The `forge` executable: parses the command line and turns library errors into one message,
// a hint and an exit code. Subcommands live in cli/cmd_<verb>.cpp.
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <unistd.h>

#include <CLI/CLI.hpp>

#include "command.h"
#include <forge/core/error.h>

namespace forge::cli {
std::vector<CommandSetup>& command_setups() {
    static std::vector<CommandSetup> setups;
    return setups;
}
} // namespace forge::cli

namespace {

// libgomp's default wait policy spins idle OpenMP workers for a long time. On a dedicated machine
// that is a little faster (nanoGPT anchor: 36 vs 41 ms/step on 2 cores), but when other programs
// share the cores a spinning worker waits for one that is not running: the same step took 2 s
// under a load of 7 (passive: 87 ms), and GOMP_SPINCOUNT=20000..100000 collapsed too
// (172-1175 ms). The policy is read when libgomp loads, before main, so the CLI re-executes
// itself once with OMP_WAIT_POLICY=passive unless the user chose a policy or spin count.
void ensure_passive_omp_wait(char** argv) {
    if (std::getenv("OMP_WAIT_POLICY") || std::getenv("GOMP_SPINCOUNT") ||
        std::getenv("FORGE_NO_REEXEC"))
        return;
    ::setenv("OMP_WAIT_POLICY", "passive", 1);
    ::execv("/proc/self/exe", argv); // returns only on failure: carry on as we are
}

} // namespace

int main(int argc, char** argv) {
    ensure_passive_omp_wait(argv);
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
