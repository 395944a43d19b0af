// dtype promotion and device names.
#include <forge/core/device.h>
#include <forge/core/dtype.h>
#include <forge/core/error.h>

namespace forge {

DType promote_types(DType a, DType b) {
    if (a == b) return a;
    auto rank = [](DType t) {
        switch (t) {
        case DType::u8: return 0;
        case DType::i32: return 1;
        case DType::i64: return 2;
        case DType::f16: return 3;
        case DType::bf16: return 3;
        case DType::f32: return 4;
        case DType::f64: return 5;
        }
        return 0;
    };
    // f16 with bf16 has no exact common half type: use f32, as PyTorch does.
    if (is_half(a) && is_half(b)) return DType::f32;
    return rank(a) >= rank(b) ? a : b;
}

Device Device::parse(const std::string& s) {
    if (s == "cpu") return cpu();
    if (s == "cuda") return cuda(0);
    if (s.rfind("cuda:", 0) == 0) {
        try {
            size_t used = 0;
            int i = std::stoi(s.substr(5), &used);
            if (used == s.size() - 5 && i >= 0) return cuda(i);
        } catch (const std::exception&) {
        }
    }
    throw InvalidArgument("unknown device '" + s + "' (expected cpu, cuda or cuda:N)");
}

std::string Device::str() const {
    return type == DeviceType::cpu ? "cpu" : "cuda:" + std::to_string(index);
}

} // namespace forge
