// `forge new DIR`: scaffolds a training project: a commented forge.toml (model, data, training
// options; `forge train` run in DIR reads it and flags override it), a data/ folder (optionally
// seeded with --data files) and a README.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "command.h"
#include <forge/core/error.h>
#include <forge/models/config.h>

namespace {

using namespace forge;
namespace fs = std::filesystem;

struct NewOptions {
    std::string dir;
    std::string preset = "tiny";
    std::vector<std::string> data;
    bool force = false;
};

std::string config_text(const std::string& preset) {
    return R"(# Forge project config. `forge train` run in this folder reads it; any flag on the
# command line overrides the value here (e.g. `forge train --steps 100`). Keys are the flag
# names of `forge train --help` (n_layer and n-layer both work). Paths are relative to this
# file. Lines starting with # are comments: uncomment a line to use it.

[model]
preset = ")" +
           preset + R"("   # tiny, gpt2, gpt2-medium, llama-1b, ... (`forge info --preset NAME`)
# n_layer = 4          # shape overrides of the preset
# n_head = 4
# n_embd = 128
# dropout = 0.0

[data]
data = ["data"]        # text files or folders of text files (all files under a folder)
tokenizer = "char"     # char | byte | bpe:4096 | path/to/tokenizer.json
# val_fraction = 0.1   # the last 10% of the tokens is held out for evaluation

[train]
steps = 2000
batch = 12
seq_len = 64
lr = 1e-3
min_lr = 1e-4          # cosine decay from lr to min_lr over the steps
warmup = 100
weight_decay = 0.1
beta2 = 0.99
grad_clip = 1.0
# grad_accum = 1       # micro-batches per step
eval_every = 500
eval_iters = 20
seed = 1337
# threads = 2          # default: all cores; same seed + same threads = same losses
# batch_split = "auto" # CPU, small models: a slice of the batch per thread ("off": per op)

[output]
out = "out"            # checkpoint folder: model.safetensors, config.json, tokenizer.json, ...
metrics_out = "out/metrics.jsonl"
)";
}

std::string readme_text(const std::string& name) {
    return "# " + name + R"(

A Forge training project.

- `forge.toml`: the model preset, data and training options (flags override it).
- `data/`: put your text files here (UTF-8; every file under the folder is used).

Train, then generate:

```sh
forge train                          # reads forge.toml, saves to out/
forge generate --model out --prompt "Once upon a time"
forge train --resume out --steps 4000   # continue the same run further
forge info --preset tiny             # parameters and memory of the preset
```
)";
}

void write_new_file(const fs::path& p, const std::string& text) {
    std::ofstream o(p, std::ios::binary);
    FORGE_CHECK(o, "[new] cannot write ", p.string());
    o << text;
    FORGE_CHECK(o, "[new] failed writing ", p.string());
}

void run_new(const NewOptions& o) {
    ModelConfig::preset(o.preset); // unknown preset: fail before touching the disk
    const fs::path dir = o.dir;
    std::error_code ec;
    if (fs::exists(dir / "forge.toml", ec) && !o.force)
        throw InvalidArgument("[new] " + (dir / "forge.toml").string() + " already exists",
                              "pick another folder, or pass --force to overwrite forge.toml");
    for (auto& d : o.data)
        if (!fs::exists(d, ec))
            throw NotFound("[new] no such data file: " + d);
    fs::create_directories(dir / "data", ec);
    FORGE_CHECK(!ec, "[new] cannot create ", (dir / "data").string(), ": ", ec.message());
    write_new_file(dir / "forge.toml", config_text(o.preset));
    if (!fs::exists(dir / "README.md"))
        write_new_file(dir / "README.md", readme_text(fs::absolute(dir).filename().string()));
    for (auto& d : o.data) {
        fs::copy(d, dir / "data" / fs::path(d).filename(),
                 fs::copy_options::recursive | fs::copy_options::overwrite_existing, ec);
        FORGE_CHECK(!ec, "[new] cannot copy ", d, " into data/: ", ec.message());
    }
    std::printf("created %s: forge.toml, data/%s, README.md\n", dir.c_str(),
                o.data.empty() ? " (add your text files there)" : "");
    std::printf("next: cd %s && forge train\n", dir.c_str());
}

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto o = std::make_shared<NewOptions>();
    auto* cmd = root.add_subcommand("new", "Create a training project folder (forge.toml, data/)");
    cmd->add_option("dir", o->dir, "the folder to create")->required();
    cmd->add_option("--preset", o->preset, "model preset written into forge.toml (default tiny)");
    cmd->add_option("--data", o->data, "text files or folders to copy into data/");
    cmd->add_flag("--force", o->force, "overwrite an existing forge.toml");
    cmd->callback([o] { run_new(*o); });
});

} // namespace
