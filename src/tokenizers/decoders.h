// HF decoders: ByteLevel, Metaspace, WordPiece, BPEDecoder, ByteFallback, Fuse, Strip, Replace,
// CTC, Sequence. Each maps a list of token surfaces to a list of strings (HF's decode_chain).
#pragma once

#include <memory>

#include <nlohmann/json_fwd.hpp>

#include "impl.h"

namespace forge::tok {

/// `surfaces_are_bytes`: the model stores raw bytes (ByteLevel then only joins them).
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& j, std::string_view origin,
                                      bool surfaces_are_bytes);

/// True when j is a ByteLevel decoder (alone or the only step of a Sequence).
bool is_byte_level_decoder(const nlohmann::json& j);

} // namespace forge::tok
