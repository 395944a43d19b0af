// The `forge` executable: parses the command line and turns library errors into one message,
// a hint and an exit code. Subcommands live in cli/cmd_<verb>.cpp.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <sched.h>
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

// OpenMP workers wait for work by spinning (libgomp's default) or by sleeping
// (OMP_WAIT_POLICY=passive), and neither is right everywhere (nanoGPT anchor, 2 threads,
// docs/PERF.md): on an idle Intel Xeon VM spinning gave 33-37 ms/step and sleeping 137-181 ms
// (waking a halted vCPU is slow); on the shared 2-core dev box at load 2, spinning gave 1002 ms
// and sleeping 58 ms (a spinning worker waits for one that is not running). The policy is read
// when libgomp loads, before main, so the CLI chooses at start: when the machine is already
// busy (1-minute load average at least half the CPUs this process may use) it runs with
// OMP_WAIT_POLICY=passive. A policy or spin count the user set is kept.
bool machine_is_busy() {
    double load = 0;
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &load) != 1) load = 0;
        std::fclose(f);
    }
    cpu_set_t set;
    const int cpus = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    return load >= 0.5 * cpus;
}

// OpenBLAS picks its kernels when it loads, from cpuid: Cooper Lake's on both the dev box (AMD
// Zen 4) and the GPU machine's Intel Xeon (Sapphire Rapids class). On that Xeon VM its sgemm
// ran the nanoGPT anchor at 140-180 ms/step against 45-49 with Skylake-X's (docs/PERF.md), while
// on Zen 4 it runs at ~92% of the FMA peak; so on Intel CPUs where OpenBLAS chose Cooper Lake or
// Sapphire Rapids the CLI asks for Skylake-X's kernels instead.
extern "C" char* openblas_get_corename(void);
bool wants_skylakex_blas() {
    if (std::getenv("OPENBLAS_CORETYPE")) return false;
    __builtin_cpu_init();
    if (!__builtin_cpu_is("intel")) return false;
    std::string core = openblas_get_corename(); // "Cooperlake", "SapphireRapids", ...
    for (char& c : core) c = char(std::tolower(static_cast<unsigned char>(c)));
    return core == "cooperlake" || core == "sapphirerapids";
}

// Both choices are read when the libraries load, before main: the CLI re-executes itself once
// with the environment it wants (FORGE_NO_REEXEC=1 keeps the process as it is).
void choose_runtime_environment(char** argv) {
    if (std::getenv("FORGE_NO_REEXEC")) return;
    bool changed = false;
    if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT") && machine_is_busy()) {
        ::setenv("OMP_WAIT_POLICY", "passive", 1);
        changed = true;
    }
    if (wants_skylakex_blas()) {
        ::setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
        changed = true;
    }
    if (!changed) return;
    ::setenv("FORGE_NO_REEXEC", "1", 1);
    ::execv("/proc/self/exe", argv); // returns only on failure: carry on as we are
    ::unsetenv("FORGE_NO_REEXEC");
}

} // namespace

int main(int argc, char** argv) {
    choose_runtime_environment(argv);
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
