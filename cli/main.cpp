// The `forge` executable: parses the command line and turns library errors into one message,
// a hint and an exit code. Subcommands live in cli/cmd_<verb>.cpp.
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
// when libgomp loads, before main, so the CLI chooses at start: when the CPUs this process may
// run on are already at least half busy with other work, it runs with OMP_WAIT_POLICY=passive.
// A policy or spin count the user set is kept.
//
// Busy is measured on those CPUs only, over 50 ms of /proc/stat: the load average counts the
// whole machine, so on a 16-core host a process pinned to 2 idle cores read as busy (and ran
// 2-3x slower with sleeping workers) because other cores were working. Our own CPU time in
// that window is not other work and is left out: OpenBLAS starts its thread pool when it
// loads, and a new worker spins for about 0.1 s before it sleeps, which alone read as one busy
// CPU of two, so most 2-core runs chose sleeping workers, idle machine or not (6 of 6 on the
// dev box, 10 of 13 on the Xeon VM).
struct CpuTimes {
    unsigned long long busy = 0, total = 0;
};

CpuTimes times_of(const cpu_set_t& set) {
    CpuTimes t;
    FILE* f = std::fopen("/proc/stat", "r");
    if (!f) return t;
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
        int cpu = -1;
        unsigned long long v[8] = {};
        // cpuN user nice system idle iowait irq softirq steal
        if (std::sscanf(line, "cpu%d %llu %llu %llu %llu %llu %llu %llu %llu", &cpu, &v[0], &v[1],
                        &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 9 ||
            cpu < 0 || cpu >= CPU_SETSIZE || !CPU_ISSET(cpu, &set))
            continue;
        unsigned long long sum = 0;
        for (unsigned long long x : v) sum += x;
        t.total += sum;
        t.busy += sum - v[3] - v[4];
    }
    std::fclose(f);
    return t;
}

// This process's user + system time, all threads, in the clock ticks /proc/stat counts in.
unsigned long long own_ticks() {
    FILE* f = std::fopen("/proc/self/stat", "r");
    if (!f) return 0;
    char buf[1024];
    const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = '\0';
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, utime 14, stime 15.
    const char* p = std::strrchr(buf, ')');
    unsigned long long utime = 0, stime = 0;
    if (!p || std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
                          &stime) != 2)
        return 0;
    return utime + stime;
}

bool machine_is_busy() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return false;
    const unsigned long long own_a = own_ticks();
    const CpuTimes a = times_of(set);
    ::usleep(50'000);
    const CpuTimes b = times_of(set);
    const unsigned long long own_b = own_ticks();
    if (b.total <= a.total) return false;
    const unsigned long long busy = b.busy - a.busy, own = own_b - own_a;
    const double others = busy > own ? double(busy - own) : 0.0;
    return others >= 0.5 * double(b.total - a.total);
}

// OpenBLAS picks its kernels when it loads, from cpuid, and its guesses cost up to 6x on the
// nanoGPT anchor (docs/PERF.md). On the GPU machine's Intel Xeon VM, Debian's OpenBLAS 0.3.21
// does not know the CPU model and falls back to Prescott (SSE3) kernels: 69 ms/step, against
// 24 ms/step with Skylake-X's AVX-512 kernels and 42 with Haswell's; on another Xeon it chose
// Cooper Lake's and ran 3x slower than Skylake-X's. On the dev box (AMD Zen 4) it chooses
// Cooper Lake's, which reach ~92% of the FMA peak there. So: on CPUs with AVX-512 the CLI asks
// for Skylake-X's kernels unless OpenBLAS chose them (or Cooper Lake's on AMD); on AVX2 CPUs
// where it fell back to a pre-AVX2 core, for Haswell's. Returns "" to keep OpenBLAS's choice.
extern "C" char* openblas_get_corename(void);
const char* better_blas_core() {
    if (std::getenv("OPENBLAS_CORETYPE")) return "";
    __builtin_cpu_init();
    std::string core = openblas_get_corename(); // "Prescott", "Haswell", "SkylakeX", ...
    for (char& c : core) c = char(std::tolower(static_cast<unsigned char>(c)));
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (avx512) {
        if (core == "skylakex" || (core == "cooperlake" && __builtin_cpu_is("amd"))) return "";
        return "SkylakeX";
    }
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2 && (core == "prescott" || core == "core2" || core == "penryn" ||
                 core == "dunnington" || core == "nehalem" || core == "atom"))
        return "Haswell";
    return "";
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
    if (const char* core = better_blas_core(); *core) {
        ::setenv("OPENBLAS_CORETYPE", core, 1);
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
