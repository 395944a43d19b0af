// CudaLM in a build without the CUDA backend: every entry point says so. The real one is
// src/backends/cuda/decode_lm.cpp (built with FORGE_CUDA=ON).
#include <forge/generate/cuda_lm.h>

#ifndef FORGE_HAS_CUDA
#include <forge/core/error.h>

namespace forge {

namespace {
[[noreturn]] void no_cuda() {
    throw DeviceError("[cuda decode] this build of Forge has no CUDA backend "
                      "(configure with -DFORGE_CUDA=ON)");
}
} // namespace

struct CudaLM::Impl {};

CudaLM::CudaLM(Transformer&, Options) {
    no_cuda();
}
CudaLM::CudaLM(const ModelConfig&, const infer::QuantLM::Lookup&, Options,
               std::shared_ptr<Transformer>) {
    no_cuda();
}
std::unique_ptr<CudaLM> CudaLM::from_gguf(const std::filesystem::path&, Options) {
    no_cuda();
}
std::unique_ptr<CudaLM> CudaLM::from_transformer(Transformer&, quant::GgmlType, Options) {
    no_cuda();
}
CudaLM::~CudaLM() = default;
int64_t CudaLM::n_vocab() const {
    no_cuda();
}
int64_t CudaLM::n_ctx() const {
    no_cuda();
}
std::unique_ptr<CausalLM::State> CudaLM::new_state(int64_t) {
    no_cuda();
}
void CudaLM::eval(State&, std::span<const TokenId>, std::vector<float>&) {
    no_cuda();
}
void CudaLM::prefill(State&, std::span<const TokenId>) {
    no_cuda();
}
std::vector<TokenId> CudaLM::greedy(State&, TokenId, int64_t) {
    no_cuda();
}
bool CudaLM::graph_active() const {
    return false;
}
bool CudaLM::persistent_active() const {
    return false;
}
bool CudaLM::batched_prefill_active() const {
    return false;
}
int64_t CudaLM::weight_bytes_per_token() const {
    return 0;
}
std::string CudaLM::weight_format() const {
    return "";
}

} // namespace forge
#endif
