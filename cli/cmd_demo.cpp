// `forge demo`: the tensor core end to end until the model presets land (issue #4). Builds a
// small character-level transformer from ops (embedding, layer_norm, matmul, causal attention,
// GELU, fused cross-entropy), trains it with Adam through autograd on a text file, then samples.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>

#include "command.h"
#include <forge/autograd/autograd.h>
#include <forge/core/ops.h>

namespace {

using namespace forge;

struct DemoOptions {
    std::string data = "data/tinyshakespeare.txt";
    int steps = 300, batch = 16, seq = 64, n_embd = 64, n_head = 4, n_layer = 2;
    double lr = 3e-3;
    int sample_chars = 300;
    uint64_t seed = 1337;
};

struct Block {
    Tensor ln1_w, ln1_b, w_qkv, w_o, ln2_w, ln2_b, w_fc, w_proj;
};

struct CharModel {
    int vocab, n_embd, n_head;
    Tensor wte, wpe, lnf_w, lnf_b;
    std::vector<Block> blocks;

    std::vector<Tensor> parameters() {
        std::vector<Tensor> ps{wte, wpe, lnf_w, lnf_b};
        for (auto& b : blocks)
            ps.insert(ps.end(), {b.ln1_w, b.ln1_b, b.w_qkv, b.w_o, b.ln2_w, b.ln2_b, b.w_fc,
                                 b.w_proj});
        return ps;
    }

    // ids: (B, T) i64 -> logits (B*T, V)
    Tensor forward(const Tensor& ids) {
        const int64_t B = ids.size(0), T = ids.size(1), C = n_embd, H = n_head, D = C / H;
        Tensor x = add(embedding(wte, ids), wpe.narrow(0, 0, T)); // (B, T, C)
        for (auto& b : blocks) {
            Tensor qkv = matmul(layer_norm(x, b.ln1_w, b.ln1_b), b.w_qkv); // (B, T, 3C)
            auto parts = split(qkv, {C, C, C}, 2);
            auto heads = [&](const Tensor& t) { return t.reshape({B, T, H, D}).permute({0, 2, 1, 3}); };
            Tensor att = attention(heads(parts[0]), heads(parts[1]), heads(parts[2])); // (B,H,T,D)
            att = att.permute({0, 2, 1, 3}).reshape({B, T, C});
            x = add(x, matmul(att, b.w_o));
            Tensor h = gelu(matmul(layer_norm(x, b.ln2_w, b.ln2_b), b.w_fc));
            x = add(x, matmul(h, b.w_proj));
        }
        Tensor logits = matmul(layer_norm(x, lnf_w, lnf_b), wte.t()); // tied head
        return logits.reshape({B * T, vocab});
    }
};

CharModel make_model(int vocab, const DemoOptions& o) {
    CharModel m{vocab, o.n_embd, o.n_head, {}, {}, {}, {}, {}};
    const int64_t C = o.n_embd;
    uint64_t seed = o.seed;
    auto param = [&](Tensor t) { return t.set_requires_grad(true); };
    auto normal = [&](Shape s, double std) { return param(Tensor::randn(s, ++seed, DType::f32, 0, std)); };
    const double proj_std = 0.02 / std::sqrt(2.0 * o.n_layer); // GPT-2's scaled residual init
    m.wte = normal({vocab, C}, 0.02);
    m.wpe = normal({o.seq, C}, 0.01);
    m.lnf_w = param(Tensor::ones({C}));
    m.lnf_b = param(Tensor::zeros({C}));
    for (int l = 0; l < o.n_layer; ++l)
        m.blocks.push_back({param(Tensor::ones({C})), param(Tensor::zeros({C})),
                            normal({C, 3 * C}, 0.02), normal({C, C}, proj_std),
                            param(Tensor::ones({C})), param(Tensor::zeros({C})),
                            normal({C, 4 * C}, 0.02), normal({4 * C, C}, proj_std)});
    return m;
}

struct Adam {
    double lr, b1 = 0.9, b2 = 0.99, eps = 1e-8;
    int t = 0;
    std::vector<Tensor> params, m, v;
    Adam(std::vector<Tensor> ps, double lr_) : lr(lr_), params(std::move(ps)) {
        for (auto& p : params) {
            m.push_back(Tensor::zeros(p.shape()));
            v.push_back(Tensor::zeros(p.shape()));
        }
    }
    void step() {
        NoGradGuard ng;
        ++t;
        const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
        for (size_t i = 0; i < params.size(); ++i) {
            Tensor g = params[i].grad();
            if (!g.defined()) continue;
            m[i].copy_(add(mul_scalar(m[i], b1), mul_scalar(g, 1 - b1)));
            v[i].copy_(add(mul_scalar(v[i], b2), mul_scalar(mul(g, g), 1 - b2)));
            Tensor update = div(mul_scalar(m[i], lr / c1), add_scalar(sqrt(mul_scalar(v[i], 1 / c2)), eps));
            params[i].copy_(sub(params[i].detach(), update));
            params[i].zero_grad();
        }
    }
};

int run_demo(const DemoOptions& o) {
    std::ifstream in(o.data, std::ios::binary);
    if (!in)
        throw NotFound("[demo] cannot open data file '" + o.data + "'",
                       "run from the repository root, or pass --data FILE");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    FORGE_CHECK(text.size() > size_t(o.seq) * 20, "[demo] ", o.data, " has ", text.size(),
                " bytes; need at least ", o.seq * 20);
    // Character vocabulary: the distinct bytes of the corpus.
    std::vector<int> to_id(256, -1);
    std::string chars;
    for (unsigned char c : text)
        if (to_id[c] < 0) {
            to_id[c] = 0;
            chars.push_back(char(c));
        }
    std::sort(chars.begin(), chars.end());
    for (size_t i = 0; i < chars.size(); ++i)
        to_id[(unsigned char)chars[i]] = int(i);
    std::vector<int64_t> tokens(text.size());
    for (size_t i = 0; i < text.size(); ++i)
        tokens[i] = to_id[(unsigned char)text[i]];
    const size_t n_train = tokens.size() * 9 / 10;
    std::printf("demo: %zu characters from %s, vocab %zu, %d steps of %dx%d tokens\n",
                text.size(), o.data.c_str(), chars.size(), o.steps, o.batch, o.seq);

    std::mt19937_64 rng(o.seed);
    auto batch = [&](bool train) {
        size_t lo = train ? 0 : n_train, hi = train ? n_train : tokens.size();
        std::uniform_int_distribution<size_t> pick(lo, hi - size_t(o.seq) - 2);
        std::vector<int64_t> x, y;
        for (int b = 0; b < o.batch; ++b) {
            size_t s = pick(rng);
            x.insert(x.end(), tokens.begin() + long(s), tokens.begin() + long(s) + o.seq);
            y.insert(y.end(), tokens.begin() + long(s) + 1, tokens.begin() + long(s) + o.seq + 1);
        }
        return std::pair{Tensor::from_vector(x, {o.batch, o.seq}),
                         Tensor::from_vector(y, {int64_t(o.batch) * o.seq})};
    };
    CharModel model = make_model(int(chars.size()), o);
    Adam opt(model.parameters(), o.lr);
    auto eval_loss = [&] {
        NoGradGuard ng;
        double s = 0;
        for (int i = 0; i < 8; ++i) {
            auto [x, y] = batch(false);
            s += cross_entropy(model.forward(x), y).item();
        }
        return s / 8;
    };
    std::printf("step %4d  val loss %.4f (uniform guess: %.4f)\n", 0, eval_loss(),
                std::log(double(chars.size())));
    auto t0 = std::chrono::steady_clock::now();
    for (int step = 1; step <= o.steps; ++step) {
        auto [x, y] = batch(true);
        Tensor loss = cross_entropy(model.forward(x), y);
        loss.backward();
        opt.step();
        if (step % 50 == 0 || step == o.steps) {
            double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            std::printf("step %4d  train loss %.4f  %.0f tokens/s\n", step, loss.item(),
                        double(step) * o.batch * o.seq / secs);
            std::fflush(stdout);
        }
    }
    std::printf("step %4d  val loss %.4f\n", o.steps, eval_loss());

    // Sample: run the model over the last seq characters, draw the next from softmax(logits/0.8).
    NoGradGuard ng;
    std::vector<int64_t> ctx{to_id['\n']};
    std::string out;
    std::uniform_real_distribution<double> u(0, 1);
    for (int i = 0; i < o.sample_chars; ++i) {
        int64_t T = std::min<int64_t>(int64_t(ctx.size()), o.seq);
        std::vector<int64_t> window(ctx.end() - T, ctx.end());
        Tensor logits = model.forward(Tensor::from_vector(window, {1, T}));
        Tensor p = softmax(mul_scalar(logits.select(0, T - 1), 1 / 0.8));
        auto probs = p.to_vector<double>();
        double r = u(rng), acc = 0;
        size_t next = probs.size() - 1;
        for (size_t k = 0; k < probs.size(); ++k)
            if ((acc += probs[k]) >= r) {
                next = k;
                break;
            }
        ctx.push_back(int64_t(next));
        out.push_back(chars[next]);
    }
    std::printf("---- sample ----\n%s\n----------------\n", out.c_str());
    return 0;
}

FORGE_CLI_COMMAND([](CLI::App& root) {
    auto opts = std::make_shared<DemoOptions>();
    auto* cmd = root.add_subcommand(
        "demo", "Train a small character-level transformer with the tensor core, then sample");
    cmd->add_option("--data", opts->data, "training text file");
    cmd->add_option("--steps", opts->steps, "optimizer steps");
    cmd->add_option("--batch", opts->batch, "sequences per step");
    cmd->add_option("--seq", opts->seq, "characters per sequence");
    cmd->add_option("--lr", opts->lr, "Adam learning rate");
    cmd->add_option("--seed", opts->seed, "random seed");
    cmd->callback([opts] { run_demo(*opts); });
});

} // namespace
