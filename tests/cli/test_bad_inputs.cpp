// The catalogue of bad inputs (docs/bad-inputs.md), one case per row: each runs the `dume`
// command as a user would and expects a non-zero exit, one "dume" line on stderr naming what
// and where (the row's message), and no output left behind (no output directory, no temporary
// sibling). A last test checks that the document and these cases list the same rows.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "comm.hpp"
#include "hdf5_util.hpp"
#include "merge_inputs.hpp"
#include "test_util.hpp"

namespace {

using namespace dume;
using namespace dume::test;
namespace fs = std::filesystem;
using ::testing::HasSubstr;

struct DumeRun {
  int status = -1;
  std::string err;
};

// Runs `dume ARGS` in `dir` with stdout discarded; `file_limit` > 0 caps the size of any file it
// writes (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG: a full disk, simulated).
DumeRun run_dume(const std::vector<std::string>& args, const fs::path& dir, rlim_t file_limit = 0) {
  const fs::path err = dir / "stderr.txt";
  const pid_t pid = fork();
  if (pid == 0) {
    if (chdir(dir.c_str()) != 0) _exit(127);
    const int out = open("/dev/null", O_WRONLY), e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(out, 1);
    dup2(e, 2);
    if (file_limit > 0) {  // Open MPI's shared-memory files would hit the limit first: none
      setenv("OMPI_MCA_btl", "self", 1);
      setenv("PMIX_MCA_gds", "hash", 1);
      signal(SIGXFSZ, SIG_IGN);
      const rlimit limit{file_limit, file_limit};
      setrlimit(RLIMIT_FSIZE, &limit);
    }
    setenv("OMP_NUM_THREADS", "1", 1);
    std::vector<char*> argv{const_cast<char*>(DUME_EXECUTABLE)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(DUME_EXECUTABLE, argv.data());
    _exit(127);
  }
  int raw = 0;
  waitpid(pid, &raw, 0);
  DumeRun r;
  r.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + WTERMSIG(raw);
  std::ifstream in(err);
  r.err.assign(std::istreambuf_iterator<char>(in), {});
  return r;
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
std::string replace(std::string s, const std::string& from, const std::string& to) {
  const auto at = s.find(from);
  if (at == std::string::npos) throw std::runtime_error("test setup: '" + from + "' not found");
  return s.replace(at, from.size(), to);
}

// A safetensors file from a header text and data bytes.
std::string safetensors(const std::string& header, const std::string& data, std::uint64_t declared = 0) {
  const std::uint64_t n = declared ? declared : header.size();
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  return bytes + header + data;
}

// Flips one byte of the first chunk of dataset `path` in `file` (an HDF5 file dume wrote).
void corrupt_dataset(const fs::path& file, const std::string& path) {
  haddr_t address = 0;
  {
    const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    const hid_t d = H5Dopen2(f, path.c_str(), H5P_DEFAULT);
    const hid_t space = H5Dget_space(d);
    hsize_t offset[2] = {}, size = 0;
    unsigned mask = 0;
    H5Dget_chunk_info(d, space, 0, offset, &mask, &address, &size);
    H5Sclose(space);
    H5Dclose(d);
    H5Fclose(f);
  }
  std::string bytes = read_bytes(file);
  bytes.at(address + 4) ^= 0x40;
  write_bytes(file, bytes);
}

// The inputs of a small merge (2 experts, f32) in `dir`; returns merge.yaml's text (also written).
std::string merge_inputs(const fs::path& dir) {
  const std::string yaml = write_merge_inputs(dir, 2, DType::F32, "out", 1024);
  write_bytes(dir / "merge.yaml", yaml);
  return yaml;
}
void set_yaml(const fs::path& dir, const std::string& yaml) { write_bytes(dir / "merge.yaml", yaml); }

// A finished merge (made once per suite) copied into `dir`/moe.
fs::path good_moe(const fs::path& dir);

const std::vector<std::string> kMerge = {"merge", "merge.yaml"};

struct BadInput {
  std::string id;
  // Prepares the bad input in the case's directory and returns the dume arguments.
  std::function<std::vector<std::string>(const fs::path&)> prepare;
  std::vector<std::string> message;  // parts of the one error line
  rlim_t file_limit = 0;
};

std::vector<BadInput> cases() {
  std::vector<BadInput> c;
  const auto checkpoint = [](const fs::path& dir, const std::function<void(const fs::path&)>& damage) {
    merge_inputs(dir);
    damage(dir / "d1");
    return kMerge;
  };
  const auto weights = [](const fs::path& expert) { return expert / "model.safetensors"; };

  // --- safetensors and checkpoints ---
  c.push_back({"safetensors-truncated", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) { fs::resize_file(weights(e), fs::file_size(weights(e)) - 100); });
               }, {"d1/model.safetensors", "outside the data area"}});
  c.push_back({"safetensors-too-short", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) { write_bytes(weights(e), "abc"); });
               }, {"d1/model.safetensors", "file of 3 bytes is too short for a header"}});
  c.push_back({"safetensors-header-length", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) { write_bytes(weights(e), safetensors("{}", "", 1ull << 40)); });
               }, {"d1/model.safetensors", "header length 1099511627776 is absurdly large"}});
  c.push_back({"safetensors-header-past-end", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) { write_bytes(weights(e), safetensors("{}", "", 4096)); });
               }, {"d1/model.safetensors", "header length 4096 runs past the end of the file"}});
  c.push_back({"safetensors-corrupt-json", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   std::string bytes = read_bytes(weights(e));
                   bytes[20] = '\x01';
                   write_bytes(weights(e), bytes);
                 });
               }, {"d1/model.safetensors", "invalid JSON header"}});
  c.push_back({"safetensors-overlap", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(weights(e), safetensors(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                                                       R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                                                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                                       std::string(16, '\0')));
                 });
               }, {"d1/model.safetensors", "tensors 'a' and 'b' overlap"}});
  c.push_back({"safetensors-dtype-shape", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(weights(e), safetensors(R"({"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})",
                                                       std::string(16, '\0')));
                 });
               }, {"d1/model.safetensors", "tensor 'a': F32 x shape [2, 3] = 24 bytes, but data_offsets span 16"}});
  c.push_back({"safetensors-duplicate", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(weights(e), safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                                       R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                                       std::string(16, '\0')));
                 });
               }, {"d1/model.safetensors", "duplicate tensor name 'a'"}});
  c.push_back({"checkpoint-missing-tensor", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(weights(e), safetensors(R"({"model.embed_tokens.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                                       std::string(4, '\0')));
                 });
               }, {"d1: tensor 'model.norm.weight' required by config.json (num_hidden_layers=3) is in no file"}});
  c.push_back({"checkpoint-no-weights", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) { fs::remove(weights(e)); });
               }, {"d1", "no model.safetensors or model.safetensors.index.json"}});
  c.push_back({"config-missing", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) { fs::remove(e / "config.json"); });
               }, {"d1/config.json: cannot read (is", "a Hugging Face model directory?)"}});
  c.push_back({"config-corrupt", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) { write_bytes(e / "config.json", "{\"vocab_size\": 64,"); });
               }, {"d1/config.json: invalid JSON"}});
  c.push_back({"config-wrong-type", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(e / "config.json", replace(read_bytes(e / "config.json"), "\"hidden_size\": 48", "\"hidden_size\": \"48\""));
                 });
               }, {"d1/config.json: 'hidden_size' must be a positive integer, got \"48\""}});
  c.push_back({"config-absurd-size", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(e / "config.json", replace(read_bytes(e / "config.json"), "\"vocab_size\": 64", "\"vocab_size\": 1000000000000"));
                 });
               }, {"d1/config.json: 'vocab_size' is 1000000000000, larger than any model"}});
  c.push_back({"config-absurd-layers", [=](const fs::path& d) {  // was 38 s and 14.8 GB to a bad_alloc
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(e / "config.json", replace(read_bytes(e / "config.json"), "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 16777216"));
                 });
               }, {"d1/config.json: 'num_hidden_layers' is 16777216, larger than any model (limit 65536)"}});
  c.push_back({"config-rope-theta", [=](const fs::path& d) {  // was an overflow after the calibration
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(e / "config.json", replace(read_bytes(e / "config.json"), "\"rope_theta\": 10000.0", "\"rope_theta\": -1.0"));
                 });
               }, {"d1/config.json: 'rope_theta' must be a finite number > 0, got -1.000000"}});
  c.push_back({"config-negative-eps", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(e / "config.json", replace(read_bytes(e / "config.json"), "\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": -1e-05"));
                 });
               }, {"d1/config.json: 'rms_norm_eps' must be a finite number >= 0, got -0.000010"}});
  c.push_back({"config-unsupported", [=](const fs::path& d) {
                 return checkpoint(d, [&](const fs::path& e) {
                   write_bytes(e / "config.json", replace(read_bytes(e / "config.json"), "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\""));
                 });
               }, {"d1/config.json: 'hidden_act' is 'gelu'; dume implements SwiGLU MLPs (silu) only"}});

  // --- experts that do not fit together ---
  c.push_back({"experts-rope-scaling-mismatch", [](const fs::path& d) {  // was merged silently
                 merge_inputs(d);
                 ModelConfig other = tiny_config();
                 other.rope_scaling.llama3 = true;
                 other.rope_scaling.factor = 8;
                 other.json_text = model_config_to_json(other);
                 fs::remove_all(d / "d1");
                 save_dense_checkpoint(random_model(other, 5), DType::F32, d / "d1");
                 return kMerge;
               }, {"expert 'd1'", "does not match expert 'd0': rope_scaling default vs llama3 (factor 8,"}});
  c.push_back({"experts-architecture-mismatch", [](const fs::path& d) {
                 merge_inputs(d);
                 ModelConfig other = tiny_config();
                 other.num_layers = 2;
                 other.json_text = model_config_to_json(other);
                 fs::remove_all(d / "d1");
                 save_dense_checkpoint(random_model(other, 5), DType::F32, d / "d1");
                 return kMerge;
               }, {"expert 'd1'", "does not match expert 'd0': num_hidden_layers 3 vs 2"}});
  c.push_back({"experts-dtype-mismatch", [](const fs::path& d) {
                 merge_inputs(d);
                 fs::remove_all(d / "d1");
                 save_dense_checkpoint(tiny_expert(1), DType::BF16, d / "d1");
                 return kMerge;
               }, {"experts are stored in different dtypes (F32, BF16): set output.dtype"}});
  c.push_back({"weights-nan", [](const fs::path& d) {
                 merge_inputs(d);
                 Model m = tiny_expert(1);
                 m.experts[1][0].up(3, 4) = std::numeric_limits<float>::quiet_NaN();
                 save_dense_checkpoint(m, DType::F32, d / "d1");
                 return kMerge;
               }, {"d1/model.safetensors", "tensor 'model.layers.1.mlp.up_proj.weight'", "non-finite value (nan) at flat index 148"}});
  c.push_back({"weights-inf-shared", [](const fs::path& d) {
                 merge_inputs(d);
                 Model m = tiny_expert(1);
                 m.shared.norm(7) = std::numeric_limits<float>::infinity();
                 save_dense_checkpoint(m, DType::F32, d / "d1");
                 return kMerge;
               }, {"d1/model.safetensors", "tensor 'model.norm.weight'", "non-finite value (inf) at flat index 7"}});
  c.push_back({"forward-overflow", [](const fs::path& d) {
                 merge_inputs(d);
                 for (int e = 0; e < 2; ++e) {  // finite weights whose products overflow f32 in the forward pass
                   Model m = tiny_expert(e);
                   m.experts[0][0].down.setConstant(3e38f);
                   save_dense_checkpoint(m, DType::F32, d / ("d" + std::to_string(e)));
                 }
                 return kMerge;
               }, {"layer 1: the statistics hold non-finite values (the forward pass overflowed"}});

  // --- corpora ---
  c.push_back({"corpus-id-above-vocab", [](const fs::path& d) {
                 merge_inputs(d);
                 write_bytes(d / "d1.bin", std::string(100, '\x05') + "\xc8" + std::string(100, '\x05'));
                 return kMerge;
               }, {"d1.bin", "token at position 100 has id 200", "vocab (size 64)"}});
  c.push_back({"corpus-empty", [](const fs::path& d) {
                 merge_inputs(d);
                 write_bytes(d / "d1.bin", "");
                 return kMerge;
               }, {"d1.bin: empty corpus (0 tokens)"}});
  c.push_back({"corpus-shorter-than-a-sequence", [](const fs::path& d) {
                 merge_inputs(d);
                 write_bytes(d / "d1.bin", std::string(20, '\x05'));
                 return kMerge;
               }, {"d1.bin", "corpus has 20 tokens, fewer than one window of 32 tokens"}});
  c.push_back({"corpus-odd-size", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "path: d1.bin, format: text-bytes", "path: d1.bin, format: uint16"));
                 write_bytes(d / "d1.bin", std::string(1001, '\x05'));
                 return kMerge;
               }, {"d1.bin", "size 1001 bytes", "multiple of 2"}});
  c.push_back({"corpus-missing", [](const fs::path& d) {
                 merge_inputs(d);
                 fs::remove(d / "d1.bin");
                 return kMerge;
               }, {"d1.bin: no such file"}});
  // Text corpora (d1's calibration as JSON Lines or text; the tiny experts have no tokenizer.json).
  const auto jsonl = [](const fs::path& d, const std::string& lines) {
    set_yaml(d, replace(merge_inputs(d), "path: d1.bin, format: text-bytes", "path: d1.jsonl, format: jsonl"));
    write_bytes(d / "d1.jsonl", lines);
    return kMerge;
  };
  c.push_back({"jsonl-invalid-utf8", [&](const fs::path& d) {
                 return jsonl(d, "{\"text\": \"fine\"}\n{\"text\": \"caf\xe9\"}\n");
               }, {"d1.jsonl:2:", "invalid UTF-8"}});
  c.push_back({"jsonl-missing-field", [&](const fs::path& d) {
                 return jsonl(d, "{\"body\": \"a document under another name\"}\n");
               }, {"d1.jsonl:1: no field \"text\""}});
  c.push_back({"jsonl-not-json", [&](const fs::path& d) {
                 return jsonl(d, "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{text: three}\n");
               }, {"d1.jsonl:3:", "JSON"}});
  c.push_back({"text-no-tokenizer", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "path: d1.bin, format: text-bytes", "path: d1.txt, format: text"));
                 write_bytes(d / "d1.txt", "A document to tokenize.\n");
                 return kMerge;
               }, {"d1/tokenizer.json: no such file", "dume tokenize"}});
  c.push_back({"tokenizer-unsupported", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "path: d1.bin, format: text-bytes", "path: d1.txt, format: text"));
                 write_bytes(d / "d1.txt", "A document to tokenize.\n");
                 write_bytes(d / "d1" / "tokenizer.json",
                             R"({"version": "1.0", "added_tokens": [], "normalizer": null, "pre_tokenizer": null,
                                 "post_processor": null, "decoder": null,
                                 "model": {"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]}})");
                 return kMerge;
               }, {"d1/tokenizer.json", "Unigram", "not supported"}});
  c.push_back({"megatron-bad-magic", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "path: d1.bin, format: text-bytes", "path: d1, format: megatron"));
                 write_bytes(d / "d1.idx", std::string("NOTANIDX") + std::string(40, '\0'));
                 return kMerge;
               }, {"d1.idx", "magic"}});

  // --- the YAML configuration ---
  c.push_back({"yaml-auto-without-heldout", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "lambda: 0.01", "lambda: auto"));
                 return kMerge;
               }, {"merge.yaml:4:", "router.lambda or router.temperature 'auto' is chosen on a held-out split",
                   "calibration.heldout_fraction"}});
  c.push_back({"stages-more-than-layers", [](const fs::path& d) {
                 merge_inputs(d);
                 return std::vector<std::string>{"merge", "merge.yaml", "--stages", "4"};
               }, {"parallel.stages 4 is more than the model's 3 layers: each stage needs a layer"}});
  c.push_back({"stages-not-dividing-the-ranks", [](const fs::path& d) {
                 set_yaml(d, merge_inputs(d) + "parallel: {stages: 2}\n");
                 return kMerge;
               }, {"parallel.stages 2 does not divide the job's 1 ranks: every stage needs the same number of replicas"}});
  c.push_back({"stages-with-regmean", [](const fs::path& d) {
                 set_yaml(d, merge_inputs(d) + "shared: regmean\nparallel: {stages: 2}\n");
                 return kMerge;
               }, {"shared: regmean runs every expert whole on each rank: it is not implemented with parallel.stages > 1"}});
  c.push_back({"yaml-unknown-key", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "lambda: 0.01", "lamda: 0.01"));
                 return kMerge;
               }, {"merge.yaml:4:", "unknown key 'lamda' in router (known: method, lambda"}});
  c.push_back({"yaml-wrong-type", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "lambda: 0.01", "lambda: lots"));
                 return kMerge;
               }, {"merge.yaml:4:", "router.lambda must be a number or auto, got 'lots'"}});
  c.push_back({"yaml-wrong-shape", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "calibration: {sequence_length", "calibration: [sequence_length"));
                 return kMerge;
               }, {"merge.yaml:", "invalid YAML"}});
  c.push_back({"yaml-missing-key", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "output: out\n", ""));
                 return kMerge;
               }, {"merge.yaml:1:", "missing required key 'output'"}});
  c.push_back({"yaml-bad-value", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "router: {", "router: {top_k: 3, "));
                 return kMerge;
               }, {"merge.yaml:4:", "router.top_k must be between 1 and the number of experts (2), got 3"}});
  c.push_back({"yaml-negative-lambda", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "lambda: 0.01", "lambda: -1"));
                 return kMerge;
               }, {"merge.yaml:4:", "router.lambda must be >= 0"}});
  c.push_back({"yaml-routing-layer", [](const fs::path& d) {  // was stored in the MoE
                 set_yaml(d, replace(merge_inputs(d), "router: {", "router: {routing: token+layer:99, "));
                 return kMerge;
               }, {"router.routing 'token+layer:99' takes its decision at layer 99, but the experts have 3 layers (0 to 2)"}});
  c.push_back({"yaml-sequence-too-long", [](const fs::path& d) {  // was accepted without a word
                 set_yaml(d, replace(merge_inputs(d), "sequence_length: 32", "sequence_length: 512"));
                 return kMerge;
               }, {"calibration.sequence_length 512 is longer than the experts' max_position_embeddings 256"}});
  c.push_back({"yaml-expert-named-dot", [](const fs::path& d) {  // was an HDF5 error after the calibration
                 set_yaml(d, replace(merge_inputs(d), "name: d1,", "name: .,"));
                 return kMerge;
               }, {"merge.yaml:", "expert name '.' must be non-empty without '/' or spaces, and not '.' or '..'"}});
  c.push_back({"yaml-absurd-threads", [](const fs::path& d) {  // was a crash inside the OpenMP runtime
                 set_yaml(d, replace(merge_inputs(d), "compute: {threads: 1}", "compute: {threads: 100000}"));
                 return kMerge;
               }, {"merge.yaml:7:", "compute.threads must be between 0 and 1024"}});
  c.push_back({"yaml-wrong-kind", [](const fs::path& d) {  // found by fuzz/merge_config.cpp
                 set_yaml(d, merge_inputs(d) + "eval: {methods: [dume, {oracle: 1}]}\n");
                 return kMerge;
               }, {"merge.yaml:8: bad conversion"}});
  c.push_back({"yaml-missing-file", [](const fs::path&) { return std::vector<std::string>{"merge", "nowhere.yaml"}; },
               {"nowhere.yaml: cannot read the configuration"}});

  // --- outputs ---
  c.push_back({"output-exists", [](const fs::path& d) {
                 merge_inputs(d);
                 fs::create_directories(d / "out");
                 write_bytes(d / "out" / "keep", "precious");
                 return kMerge;
               }, {"output", "out exists; pass --force to replace it"}});
  c.push_back({"output-not-writable", [](const fs::path& d) {
                 set_yaml(d, replace(merge_inputs(d), "output: out", "output: blocker/out"));
                 write_bytes(d / "blocker", "a file where a directory is needed");
                 return kMerge;
               }, {"blocker/out cannot be created", "blocker is not a directory"}});
  // The output rule (outputs.hpp): never an input, whatever the flags.
  const auto merge_forced = [](const fs::path& d, const std::string& output) {
    set_yaml(d, replace(merge_inputs(d), "output: out", "output: " + output));
    return std::vector<std::string>{"merge", "merge.yaml", "--force"};
  };
  c.push_back({"output-is-an-expert", [=](const fs::path& d) { return merge_forced(d, "d0"); },
               {"output <dir>/d0 is expert 'd0' (<dir>/d0); dume never writes over its inputs, --force or not"}});
  c.push_back({"output-inside-an-expert", [=](const fs::path& d) { return merge_forced(d, "d1/moe/"); },
               {"output <dir>/d1/moe lies inside expert 'd1' (<dir>/d1)"}});
  c.push_back({"output-contains-an-expert", [](const fs::path& d) {
                 std::string yaml = replace(merge_inputs(d), "checkpoint: d0", "checkpoint: models/d0");
                 fs::create_directories(d / "models");
                 fs::rename(d / "d0", d / "models" / "d0");
                 set_yaml(d, replace(yaml, "output: out", "output: models"));
                 return std::vector<std::string>{"merge", "merge.yaml", "--force"};
               }, {"output <dir>/models contains expert 'd0' (<dir>/models/d0)"}});
  c.push_back({"output-is-a-corpus", [=](const fs::path& d) { return merge_forced(d, "d1.bin"); },
               {"output <dir>/d1.bin is the calibration corpus of 'd1' (<dir>/d1.bin)"}});
  c.push_back({"output-working-directory", [=](const fs::path& d) { return merge_forced(d, "."); },
               {"output <dir> is the working directory (<dir>); name a new directory for it"}});
  c.push_back({"output-contains-working-directory", [=](const fs::path& d) { return merge_forced(d, ".."); },
               {"contains the working directory (<dir>)"}});
  c.push_back({"output-config-home", [](const fs::path& d) {  // `output: .` beside a config run from elsewhere
                 merge_inputs(d);
                 fs::create_directories(d / "cfg");
                 std::string yaml = read_bytes(d / "merge.yaml");
                 for (const char* path : {"checkpoint: d0", "checkpoint: d1", "path: d0", "path: d1"}) {
                   const std::string from = std::string(path), to = replace(from, ": ", ": ../");
                   for (auto at = yaml.find(from + ","); at != std::string::npos; at = yaml.find(from + ",", at + to.size()))
                     yaml.replace(at, from.size(), to);
                   for (auto at = yaml.find(from + "."); at != std::string::npos; at = yaml.find(from + ".", at + to.size()))
                     yaml.replace(at, from.size(), to);
                 }
                 write_bytes(d / "cfg" / "merge.yaml", replace(yaml, "output: out", "output: ."));
                 fs::remove(d / "merge.yaml");
                 return std::vector<std::string>{"merge", "cfg/merge.yaml", "--force"};
               }, {"output <dir>/cfg contains the configuration (<dir>/cfg/merge.yaml)"}});
  c.push_back({"output-regular-file", [=](const fs::path& d) {
                 write_bytes(d / "notes.txt", "a user's file");
                 return merge_forced(d, "notes.txt");
               }, {"output <dir>/notes.txt exists and is not a directory (not a dume output)"}});
  c.push_back({"output-not-a-dume-output", [=](const fs::path& d) {
                 fs::create_directories(d / "results");
                 write_bytes(d / "results" / "keep", "a user's file");
                 return merge_forced(d, "results");
               }, {"output <dir>/results exists and holds no moe.h5 (not this command's output); --force replaces only an earlier output"}});
  c.push_back({"output-symlink", [=](const fs::path& d) {
                 fs::create_directories(d / "elsewhere");
                 fs::create_directory_symlink("elsewhere", d / "link");
                 return merge_forced(d, "link");
               }, {"output <dir>/link is a symbolic link; name the directory itself"}});
  c.push_back({"output-locked", [](const fs::path& d) {  // a live job (pid 1 always runs) holds the output
                 merge_inputs(d);
                 write_bytes(d / ".out.lock", host_name() + " 1 0\n");
                 return kMerge;
               }, {"output <dir>/out is being written by another job (pid 1 on host", "lock <dir>/.out.lock"}});
  c.push_back({"output-locked-elsewhere", [](const fs::path& d) {  // another host's lock cannot be checked: reported
                 merge_inputs(d);
                 write_bytes(d / ".out.lock", "some-other-node 4242 0\n");
                 return kMerge;
               }, {"output <dir>/out is being written by another job (pid 4242 on host some-other-node"}});
  c.push_back({"export-over-its-moe", [](const fs::path& d) {
                 good_moe(d);
                 return std::vector<std::string>{"export", "moe", "--output", "moe", "--force"};
               }, {"output moe is the MoE (moe); dume never writes over its inputs"}});
  c.push_back({"export-into-its-moe", [](const fs::path& d) {
                 good_moe(d);
                 return std::vector<std::string>{"export", "moe", "--output", "moe/hf/", "--force"};
               }, {"output moe/hf lies inside the MoE (moe)"}});
  c.push_back({"resolve-into-its-moe", [](const fs::path& d) {
                 good_moe(d);
                 return std::vector<std::string>{"resolve", "moe", "--output", "moe/resolved", "--force"};
               }, {"output moe/resolved lies inside the MoE (moe)"}});
  c.push_back({"fold-in-reaverage-over-its-moe", [](const fs::path& d) {
                 good_moe(d);
                 merge_inputs(d);
                 write_bytes(d / "fold.yaml", "moe: moe\nexperts:\n  - {name: d2, checkpoint: d1, calibration: "
                                             "{path: d1.bin, format: text-bytes}}\noutput: moe\n");
                 return std::vector<std::string>{"fold-in", "fold.yaml", "--reaverage", "--force"};
               }, {"output <dir>/moe is the MoE (<dir>/moe)"}});
  c.push_back({"bench-write-experts-here", [](const fs::path&) {
                 return std::vector<std::string>{"bench", "--preset", "tiny", "--write-experts", "."};
               }, {"--write-experts . exists; dume bench writes synthetic experts only into a new directory"}});
  c.push_back({"output-disk-full", [](const fs::path& d) {
                 merge_inputs(d);
                 return kMerge;
               }, {".scratch/shared-rank0.safetensors: cannot write (disk full?)"}, 100 << 10});

  c.push_back({"tokenize-disk-full", [](const fs::path& d) {
                 std::string text;
                 for (int i = 0; i < 400; ++i) text += "A sentence of a document, number " + std::to_string(i) + ".\n";
                 write_bytes(d / "doc.txt", text);
                 return std::vector<std::string>{"tokenize", "doc.txt", "--format", "text", "--tokenizer",
                                                 std::string(DUME_FIXTURES_DIR) + "/tokenizers/llama3", "--output", "tok"};
               }, {"tok.bin: cannot write: File too large"}, 4 << 10});

  // --- the router solve ---
  c.push_back({"lambda-zero-singular", [](const fs::path& d) {
                 // lambda 0 and fewer calibration rows (2 sequences x 2 positions per domain) than
                 // unknowns (49): A is singular.
                 std::string yaml = replace(merge_inputs(d), "lambda: 0.01, context_tokens: 24", "lambda: 0, context_tokens: 2");
                 set_yaml(d, replace(yaml, "batch_sequences: 3}", "batch_sequences: 3, max_sequences: 2}"));
                 return kMerge;
               }, {"layer 0: A + lambda I is", "singular", "set a larger router.lambda"}});

  // --- MoE files and statistics ---
  c.push_back({"resolve-infinite-temperature", [](const fs::path& d) {  // was a degenerate MoE
                 good_moe(d);
                 return std::vector<std::string>{"resolve", "moe", "--output", "out", "--temperature", "inf"};
               }, {"--temperature: must be a finite number > 0, got inf"}});
  c.push_back({"moe-index-truncated", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 fs::resize_file(moe / "moe.h5", fs::file_size(moe / "moe.h5") / 2);
                 return std::vector<std::string>{"resolve", "moe", "--output", "out"};
               }, {"moe/moe.h5: cannot open as HDF5 (truncated or not an HDF5 file?)"}});
  c.push_back({"moe-index-garbage", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 write_bytes(moe / "moe.h5", std::string(4096, 'x'));
                 return std::vector<std::string>{"resolve", "moe", "--output", "out"};
               }, {"moe/moe.h5: cannot open as HDF5 (truncated or not an HDF5 file?)"}});
  c.push_back({"moe-shard-missing", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 fs::remove(moe / "moe-00001-of-00001.h5");
                 return std::vector<std::string>{"remove", "moe", "--domain", "d1", "--output", "out"};
               }, {"moe/moe.h5: dataset '/embed_tokens' links to", "moe-00001-of-00001.h5:/embed_tokens, which is missing"}});
  c.push_back({"moe-shard-truncated", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 fs::resize_file(moe / "moe-00001-of-00001.h5", 4096);
                 return std::vector<std::string>{"remove", "moe", "--domain", "d1", "--output", "out"};
               }, {"moe/moe.h5: dataset '/embed_tokens' links to", "which cannot be opened (truncated or corrupt shard?)"}});
  c.push_back({"moe-shard-corrupt", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 corrupt_dataset(moe / "moe-00001-of-00001.h5", "/layers/0/experts/0/gate_proj");
                 return std::vector<std::string>{"remove", "moe", "--domain", "d1", "--output", "out"};
               }, {"moe-00001-of-00001.h5: dataset '/layers/0/experts/0/gate_proj': checksum mismatch, the stored data is corrupt"}});
  c.push_back({"stats-corrupt", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 corrupt_dataset(moe / "stats.h5", "/layers/2/A/d1");
                 return std::vector<std::string>{"resolve", "moe", "--output", "out"};
               }, {"moe/stats.h5: dataset '/layers/2/A/d1': checksum mismatch, the stored data is corrupt"}});
  c.push_back({"stats-truncated", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 fs::resize_file(moe / "stats.h5", fs::file_size(moe / "stats.h5") - 1000);
                 return std::vector<std::string>{"resolve", "moe", "--output", "out"};
               }, {"moe/stats.h5: cannot open as HDF5 (truncated or not an HDF5 file?)"}});
  c.push_back({"stats-other-shared-weights", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 // stats.h5 of a merge with other shared weights (the base taken from expert d1)
                 fs::create_directories(d / "other");
                 set_yaml(d / "other", replace(merge_inputs(d / "other"), "output: out", "shared: {checkpoint: d1}\noutput: out"));
                 const DumeRun made = run_dume(kMerge, d / "other");
                 if (made.status != 0) throw std::runtime_error("test setup: " + made.err);
                 fs::copy_file(d / "other" / "out" / "stats.h5", moe / "stats.h5", fs::copy_options::overwrite_existing);
                 return std::vector<std::string>{"resolve", "moe", "--output", "out"};
               }, {"moe/stats.h5 was made with other shared weights (hash", ", the MoE's is"}});
  c.push_back({"stats-heldout-shape", [](const fs::path& d) {
                 const fs::path moe = good_moe(d);
                 {  // held-out rows 5 wide where the model is 48
                   H5Id file(H5Fopen((moe / "stats.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
                   const std::vector<float> rows(15, 1.0f);
                   const std::int64_t shape[] = {3, 5};
                   h5::write_dataset(file.get(), "/layers/0/heldout/d0", DType::F32, shape, rows.data());
                 }
                 return std::vector<std::string>{"resolve", "moe", "--output", "out"};
               }, {"moe/stats.h5: dataset '/layers/0/heldout/d0' is not (tokens, 48)"}});
  c.push_back({"moe-link-outside", [](const fs::path& d) {  // a link to a shard outside the MoE's directory
                 const fs::path moe = good_moe(d);
                 fs::copy_file(moe / "moe-00001-of-00001.h5", d / "foreign.h5");
                 {
                   H5Id file(H5Fopen((moe / "moe.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
                   H5Ldelete(file.get(), "/embed_tokens", H5P_DEFAULT);
                   H5Lcreate_external((d / "foreign.h5").c_str(), "/embed_tokens", file.get(), "/embed_tokens", H5P_DEFAULT,
                                      H5P_DEFAULT);
                 }
                 return std::vector<std::string>{"remove", "moe", "--domain", "d1", "--output", "out"};
               }, {"moe/moe.h5", "links to '<dir>/foreign.h5', outside the MoE's directory"}});
  c.push_back({"moe-unaccounted-dataset", [](const fs::path& d) {  // a 4th layer's router in a 3-layer MoE
                 const fs::path moe = good_moe(d);
                 {
                   H5Id file(H5Fopen((moe / "moe.h5").c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
                   const std::vector<float> bias(2, 0.0f);
                   const std::int64_t shape[] = {2};
                   h5::write_dataset(file.get(), "/layers/3/router/bias", DType::F32, shape, bias.data());
                 }
                 return std::vector<std::string>{"export", "moe", "--output", "hf"};
               }, {"moe/moe.h5: dataset '/layers/3/router/bias' is not part of an MoE of 3 layers and 2 experts"}});
  c.push_back({"moe-not-a-moe", [](const fs::path& d) {
                 merge_inputs(d);
                 return std::vector<std::string>{"resolve", "d0", "--output", "out"};
               }, {"d0/moe.h5: no such file"}});
  return c;
}

class BadInputs : public ::testing::TestWithParam<std::size_t> {
 public:
  static void SetUpTestSuite() {
    suite_ = make_suite_dir("bad_inputs");
    merge_inputs(suite_);
    const DumeRun r = run_dume(kMerge, suite_);
    ASSERT_EQ(r.status, 0) << r.err;
  }
  static void TearDownTestSuite() { fs::remove_all(suite_); }
  static inline fs::path suite_;
};

fs::path good_moe(const fs::path& dir) {
  fs::copy(BadInputs::suite_ / "out", dir / "moe");
  return dir / "moe";
}

// Every entry below `dir` (symlinks not followed) and a hash of its bytes ("-" for a directory
// or a link).
std::map<std::string, std::size_t> snapshot(const fs::path& dir) {
  std::map<std::string, std::size_t> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    files[fs::relative(entry.path(), dir).string()] =
        fs::is_regular_file(entry.symlink_status()) ? std::hash<std::string>{}(read_bytes(entry.path())) : 0;
  return files;
}

TEST_P(BadInputs, OneLineNonZeroExitNothingWritten) {
  const BadInput bad = cases().at(GetParam());
  const fs::path dir = suite_ / bad.id;
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::vector<std::string> args = bad.prepare(dir);
  const auto before = snapshot(dir);
  const DumeRun r = run_dume(args, dir, bad.file_limit);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.status, 128 + SIGSEGV) << r.err;
  std::vector<std::string> lines;  // dume's own lines (Open MPI adds its abort banner around them)
  std::istringstream in(r.err);
  for (std::string line; std::getline(in, line);)
    if (line.rfind("dume", 0) == 0) lines.push_back(line);
  ASSERT_EQ(lines.size(), 1u) << r.err;
  for (std::string part : bad.message) {
    for (auto at = part.find("<dir>"); at != std::string::npos; at = part.find("<dir>"))
      part.replace(at, 5, fs::canonical(dir).string());
    EXPECT_THAT(lines[0], HasSubstr(part)) << r.err;
  }
  if (std::getenv("DUME_PRINT_MESSAGES")) std::printf("MESSAGE %s | %s\n", bad.id.c_str(), lines[0].c_str());
  // Nothing lost and nothing left behind: every file as it was, no output, no temporary, no lock.
  auto after = snapshot(dir);
  after.erase("stderr.txt");
  for (const auto& [path, hash] : before)
    EXPECT_TRUE(after.contains(path) && after[path] == hash) << path << (after.contains(path) ? " changed" : " lost");
  for (const auto& [path, hash] : after) EXPECT_TRUE(before.contains(path)) << path << " left behind";
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Catalogue, BadInputs, ::testing::Range<std::size_t>(0, cases().size()),
                         [](const ::testing::TestParamInfo<std::size_t>& test) {
                           std::string name = cases().at(test.param).id;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// docs/bad-inputs.md lists exactly these cases, each row quoting its message.
TEST(BadInputsDocument, EveryRowHasACaseAndEveryCaseARow) {
  std::ifstream in(fs::path(DUME_SOURCE_DIR) / "docs" / "bad-inputs.md");
  ASSERT_TRUE(in) << "docs/bad-inputs.md";
  std::map<std::string, std::string> rows;  // id -> the row's text
  const std::regex row(R"(^\| `([a-z0-9-]+)` \|(.*)$)");
  std::smatch m;
  for (std::string line; std::getline(in, line);)
    if (std::regex_match(line, m, row)) {
      EXPECT_TRUE(rows.emplace(m[1], m[2]).second) << "duplicate row " << m[1];
    }
  std::set<std::string> ids;
  for (const BadInput& bad : cases()) {
    ids.insert(bad.id);
    const auto it = rows.find(bad.id);
    if (it == rows.end()) {
      ADD_FAILURE() << "case '" << bad.id << "' has no row in docs/bad-inputs.md";
      continue;
    }
    for (const auto& part : bad.message) EXPECT_THAT(it->second, HasSubstr(part)) << "row " << bad.id;
  }
  for (const auto& [id, text] : rows) EXPECT_TRUE(ids.contains(id)) << "row '" << id << "' has no test case";
  EXPECT_GE(rows.size(), 70u);
}

}  // namespace
