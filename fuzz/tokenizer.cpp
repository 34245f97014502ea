// libFuzzer harness: a tokenizer.json (model, normalizer, pre-tokenizer regexes, added tokens,
// post-processor) read from arbitrary bytes, then used. The input up to its first NUL byte is the
// file; the bytes after that NUL (or, without one, the input's last 64 bytes) are encoded too,
// besides a few fixed texts. A dume::Error is the expected outcome for bad files and invalid
// UTF-8; every id encode() returns must lie below vocab_size().
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "error.hpp"
#include "temp_file.hpp"
#include "tokenizer.hpp"

namespace {

void check(const dume::Tokenizer& tokenizer, const std::vector<std::uint32_t>& ids) {
  for (const std::uint32_t id : ids)
    if (id >= tokenizer.vocab_size()) __builtin_trap();  // the tokenizer's promise
}

void encode(const dume::Tokenizer& tokenizer, std::string_view text) {
  try {
    check(tokenizer, tokenizer.encode(text));
    check(tokenizer, tokenizer.encode_document(text));
  } catch (const dume::Error&) {
    // invalid UTF-8, or a regex that gives up (match limit)
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const dume::fuzz::TempFile file("tokenizer");
  const auto* nul = static_cast<const std::uint8_t*>(std::memchr(data, 0, size));
  const std::size_t json_size = nul ? static_cast<std::size_t>(nul - data) : size;
  const std::string_view tail = nul ? std::string_view(reinterpret_cast<const char*>(nul + 1), size - json_size - 1)
                                    : std::string_view(reinterpret_cast<const char*>(data), size)
                                          .substr(size > 64 ? size - 64 : 0);
  file.write(data, json_size);
  try {
    const dume::Tokenizer tokenizer = dume::Tokenizer::from_file(file.path);
    static constexpr std::string_view kTexts[] = {
        "Hello, world! It's 2024 and we're   testing\tthe tokenizer.\n\n",
        "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE6\x96\x87\xE7\xAB\xA0\xE3\x80\x82 \xE4\xB8\xAD\xE6\x96\x87",
        "emoji \xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD caf\x65\xCC\x81 \xE2\x96\x81x",
        "bad \xC3\x28 utf8 \xED\xA0\x80 \xF8",
        "",
    };
    for (const std::string_view text : kTexts) encode(tokenizer, text);
    encode(tokenizer, tail);
  } catch (const dume::Error&) {
    // a refused file: the expected outcome for most inputs
  }
  return 0;
}
