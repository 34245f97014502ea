// libFuzzer harness: text and JSONL document files from arbitrary bytes. The first byte picks
// the source: bit 0 JSONL (else text), bit 1 blank-line blocks (text), bit 2 on_bad = skip,
// bit 3 the JSONL field "content" (else "text"); the rest is the file. Every document read must
// be non-empty valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "documents.hpp"
#include "error.hpp"
#include "temp_file.hpp"
#include "utf8.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const dume::fuzz::TempFile file("documents");
  if (size < 1) return 0;
  const std::uint8_t flags = data[0];
  file.write(data + 1, size - 1);
  dume::DocumentSource source;
  source.path = file.path;
  source.format = flags & 1 ? dume::DocumentFormat::jsonl : dume::DocumentFormat::text;
  source.split = flags & 2 ? dume::DocumentSplit::blank_line : dume::DocumentSplit::file;
  source.on_bad = flags & 4 ? dume::OnBadDocument::skip : dume::OnBadDocument::error;
  source.field = flags & 8 ? "content" : "text";
  try {
    const dume::Documents documents = dume::read_documents(source);
    if (documents.texts.empty() || documents.files.size() != 1) __builtin_trap();
    for (const std::string& text : documents.texts)
      if (text.empty() || dume::invalid_utf8_offset(text)) __builtin_trap();  // the reader's promise
  } catch (const dume::Error&) {
  }
  return 0;
}
