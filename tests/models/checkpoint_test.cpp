// Checkpoints (rlhf/models/checkpoint.hpp): round trip on every backend in float and double, wrong
// shape / dtype / missing / unexpected tensors (with the model left untouched), truncated files, the
// atomic save, and the hidden fixture writer used by tests/data/check_safetensors.py.
#include "test_support.hpp"
#include "temp_files.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <unistd.h>

#include "rlhf/models/checkpoint.hpp"

using namespace rlhf;
using namespace rlhf::test;
namespace fs = std::filesystem;

namespace {

// A tiny "model": owns value and gradient buffers for a few named shapes and lends them as a
// parameter_list, the way the real models do.
template <class B, class T>
struct tiny_model {
  struct spec {
    std::string name;
    std::size_t rows, cols;
  };
  std::vector<spec> specs;
  std::vector<buffer_t<B, T>> values, grads;

  tiny_model(const B& b, std::vector<spec> s, T fill_value) : specs(std::move(s)) {
    for (const auto& p : specs) {
      values.push_back(allocate_filled<T>(b, p.rows, p.cols, fill_value));
      grads.push_back(allocate_filled<T>(b, p.rows, p.cols, T(0)));
    }
  }
  parameter_list<T, typename B::memory_space> parameters() {
    parameter_list<T, typename B::memory_space> out;
    for (std::size_t k = 0; k < specs.size(); ++k) out.push_back({specs[k].name, values[k].view(), grads[k].view()});
    return out;
  }
};

template <class B, class T>
std::vector<typename tiny_model<B, T>::spec> llama_like_specs() {
  return {{"tok_embeddings", 7, 4}, {"layers.0.attention.wq", 4, 4}, {"layers.0.attention_norm", 1, 4}, {"output", 7, 4}};
}

template <class B, class T>
void fill_random(const B& b, tiny_model<B, T>& m, std::uint64_t salt) {
  auto g = rng(salt);
  for (auto& buf : m.values) {
    const auto host = normal<T>(g, buf.view().size());
    b.copy(vector_view<const T, host_space>{host.data(), host.size()}, buf.view().flat());
  }
  b.synchronize();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const rlhf::invalid_argument& e) {
    return e.what();
  }
  return {};
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("checkpoint: save then load restores parameters, extras and metadata exactly",
                        "[models][checkpoint]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  temp_dir dir("rlhf_checkpoint_test");
  const fs::path path = dir / "model.safetensors";

  tiny_model<B, T> saved(b, llama_like_specs<B, T>(), T(0));
  fill_random(b, saved, 11);
  // Optimizer state beside the parameters, e.g. AdamW's first moment of wq and a step counter.
  auto m_wq = to_backend(b, std::vector<T>{T(0.5), T(-0.25), T(1e-8), T(3), T(0), T(1), T(2), T(4),  //
                                           T(5), T(6), T(7), T(8), T(9), T(10), T(11), T(12)},
                         4, 4);
  auto step = to_backend(b, std::vector<T>{T(42)}, 1, 1);
  const std::map<std::string, std::string> meta = {{"config", R"({"dim":4,"n_layers":1,"vocab_size":7})"},
                                                   {"step", "42"}};
  const auto params = saved.parameters();
  save_checkpoint(b, path, params, {{"adamw.m.layers.0.attention.wq", m_wq.view()}, {"adamw.step", step.view()}}, meta);
  CHECK(dir.count() == 1);  // no temporary file left behind

  // The file is plain safetensors: the right dtype and [rows, cols] shapes.
  const auto file = read_safetensors(path);
  CHECK(file.metadata == meta);
  REQUIRE(file.tensors.size() == 6);
  for (const auto& p : params) {
    const auto& t = file.tensors.at(p.name);
    CHECK(t.dtype == (std::is_same_v<T, float> ? safetensors_dtype::f32 : safetensors_dtype::f64));
    CHECK(t.shape == std::vector<std::size_t>{p.value.rows, p.value.cols});
    CHECK(t.template values<T>() == to_host(b, p.value));
  }

  tiny_model<B, T> loaded(b, llama_like_specs<B, T>(), T(-7));
  auto m_in = allocate_filled<T>(b, 4, 4, T(0));
  auto step_in = allocate_filled<T>(b, 1, 1, T(0));
  const auto got_meta = load_checkpoint(b, path, loaded.parameters(),
                                        {{"adamw.m.layers.0.attention.wq", m_in.view()}, {"adamw.step", step_in.view()}});
  CHECK(got_meta == meta);
  for (std::size_t k = 0; k < params.size(); ++k) {
    CAPTURE(params[k].name);
    CHECK(to_host(b, loaded.values[k].view()) == to_host(b, saved.values[k].view()));  // bit-exact
    CHECK(to_host(b, loaded.grads[k].view()) == std::vector<T>(loaded.grads[k].view().size(), T(0)));  // untouched
  }
  CHECK(to_host(b, m_in.view()) == to_host(b, m_wq.view()));
  CHECK(to_host(b, step_in.view()) == std::vector<T>{T(42)});

  // Loading only the model from a file that also holds optimizer state needs strict = false.
  tiny_model<B, T> only_model(b, llama_like_specs<B, T>(), T(0));
  CHECK_THROWS_WITH(load_checkpoint(b, path, only_model.parameters()),
                    "rlhf::load_checkpoint: " + path.string() +
                        ": expected only the requested tensors (4), received 2 more: 'adamw.m.layers.0.attention.wq', "
                        "'adamw.step' (set checkpoint_load_options::strict = false to ignore them)");
  CHECK(to_host(b, only_model.values[0].view()) == std::vector<T>(28, T(0)));  // a failed load copies nothing
  checkpoint_load_options lax;
  lax.strict = false;
  load_checkpoint(b, path, only_model.parameters(), {}, lax);
  CHECK(to_host(b, only_model.values[3].view()) == to_host(b, saved.values[3].view()));

  // Saving again replaces the file atomically with the new values.
  fill_random(b, saved, 12);
  save_checkpoint(b, path, saved.parameters());
  CHECK(dir.count() == 1);
  load_checkpoint(b, path, loaded.parameters());
  CHECK(to_host(b, loaded.values[1].view()) == to_host(b, saved.values[1].view()));
  CHECK(read_safetensors(path).metadata.empty());
}

TEMPLATE_LIST_TEST_CASE("checkpoint: wrong shape, dtype or a missing tensor fails naming it, model untouched",
                        "[models][checkpoint]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  using Other = std::conditional_t<std::is_same_v<T, float>, double, float>;
  const auto b = TestType::make();
  temp_dir dir("rlhf_checkpoint_test");
  const fs::path path = dir / "model.safetensors";
  tiny_model<B, T> saved(b, {{"layers.0.attention.wq", 64, 32}, {"norm", 1, 8}}, T(1));
  save_checkpoint(b, path, saved.parameters());
  const std::string prefix = "rlhf::load_checkpoint: " + path.string() + ": ";

  tiny_model<B, T> square(b, {{"layers.0.attention.wq", 64, 64}, {"norm", 1, 8}}, T(3));
  CHECK(error_of([&] { load_checkpoint(b, path, square.parameters()); }) ==
        prefix + "tensor 'layers.0.attention.wq': expected shape [64, 64], received [64, 32]");
  tiny_model<B, T> transposed(b, {{"layers.0.attention.wq", 32, 64}, {"norm", 1, 8}}, T(3));
  CHECK(error_of([&] { load_checkpoint(b, path, transposed.parameters()); }) ==
        prefix + "tensor 'layers.0.attention.wq': expected shape [32, 64], received [64, 32]");
  tiny_model<B, T> vec(b, {{"layers.0.attention.wq", 64, 32}, {"norm", 1, 9}}, T(3));
  CHECK(error_of([&] { load_checkpoint(b, path, vec.parameters()); }) ==
        prefix + "tensor 'norm': expected shape [1, 9] (or [9]), received [1, 8]");
  // Nothing was copied by the failed loads (the first tensor matched in the last one).
  CHECK(to_host(b, vec.values[0].view()) == std::vector<T>(64 * 32, T(3)));

  tiny_model<B, Other> other(b, {{"layers.0.attention.wq", 64, 32}, {"norm", 1, 8}}, Other(3));
  const std::string want_dtype = std::is_same_v<T, float> ? "F64" : "F32";
  const std::string got_dtype = std::is_same_v<T, float> ? "F32" : "F64";
  CHECK(error_of([&] { load_checkpoint(b, path, other.parameters()); }) ==
        prefix + "tensor 'layers.0.attention.wq': expected dtype " + want_dtype + ", received " + got_dtype);

  tiny_model<B, T> more(b, {{"layers.0.attention.wq", 64, 32}, {"norm", 1, 8}, {"output", 2, 2}}, T(3));
  CHECK(error_of([&] { load_checkpoint(b, path, more.parameters()); }) ==
        prefix + "tensor 'output': expected a tensor of dtype " + got_dtype +
            " and shape [2, 2], received none (the file has no tensor of that name)");
  CHECK(to_host(b, more.values[0].view()) == std::vector<T>(64 * 32, T(3)));

  // A file whose vectors are 1-D (as PyTorch writes them) loads into 1 x n views.
  const std::vector<T> norm = {T(1), T(2), T(3), T(4), T(5), T(6), T(7), T(8)};
  const std::vector<T> wq(64 * 32, T(0.5));
  write_safetensors(dir / "torch.safetensors",
                    {make_tensor_ref<T>("norm", norm, {8}), make_tensor_ref<T>("layers.0.attention.wq", wq, {64, 32})});
  load_checkpoint(b, dir / "torch.safetensors", saved.parameters());
  CHECK(to_host(b, saved.values[1].view()) == norm);
  CHECK(to_host(b, saved.values[0].view()) == wq);
}

TEMPLATE_LIST_TEST_CASE("checkpoint: bad names, truncated files and failed saves", "[models][checkpoint]", all_configs) {
  using T = typename TestType::value;
  using B = typename TestType::backend;
  const auto b = TestType::make();
  temp_dir dir("rlhf_checkpoint_test");
  const fs::path path = dir / "model.safetensors";
  tiny_model<B, T> model(b, {{"a", 2, 3}, {"b", 1, 5}}, T(2));
  save_checkpoint(b, path, model.parameters(), {}, {{"config", "{}"}});
  const auto good = read_bytes(path);

  // Duplicate, empty and reserved names are argument errors, before any file is touched.
  tiny_model<B, T> dup(b, {{"a", 2, 3}, {"a", 1, 5}}, T(2));
  CHECK_THROWS_WITH(save_checkpoint(b, path, dup.parameters()),
                    Catch::Contains("rlhf::save_checkpoint") && Catch::Contains("'params'") &&
                        Catch::Contains("received the name 'a' twice"));
  CHECK_THROWS_WITH(load_checkpoint(b, path, dup.parameters()), Catch::Contains("rlhf::load_checkpoint") &&
                                                                    Catch::Contains("received the name 'a' twice"));
  auto extra = allocate_filled<T>(b, 1, 1, T(0));
  CHECK_THROWS_WITH(save_checkpoint(b, path, model.parameters(), {{"b", extra.view()}}),
                    Catch::Contains("'extra'") && Catch::Contains("received the name 'b' twice"));
  CHECK_THROWS_WITH(save_checkpoint(b, path, model.parameters(), {{"", extra.view()}}),
                    Catch::Contains("'extra'") && Catch::Contains("expected non-empty tensor names"));
  CHECK_THROWS_WITH(save_checkpoint(b, path, model.parameters(), {{"__metadata__", extra.view()}}),
                    Catch::Contains("the reserved name '__metadata__'"));
  CHECK(read_bytes(path) == good);

  // A save that fails (missing directory) leaves the existing checkpoint as it was.
  CHECK_THROWS_WITH(save_checkpoint(b, dir / "missing" / "m.safetensors", model.parameters()),
                    Catch::Contains("rlhf::write_safetensors") && Catch::Contains("cannot create the temporary file"));
  CHECK(read_bytes(path) == good);
  CHECK(dir.count() == 1);

  // A truncated checkpoint is rejected wherever it is cut; the model keeps its values.
  tiny_model<B, T> target(b, {{"a", 2, 3}, {"b", 1, 5}}, T(9));
  const fs::path cut = dir / "cut.safetensors";
  for (std::size_t size = 0; size < good.size(); size += (size < 16 || size + 24 > good.size()) ? 1 : 7) {
    CAPTURE(size);
    {
      std::ofstream out(cut, std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(good.data()), static_cast<std::streamsize>(size));
    }
    CHECK_THROWS_WITH(load_checkpoint(b, cut, target.parameters()),
                      Catch::StartsWith("rlhf::read_safetensors: " + cut.string() + ": "));
  }
  CHECK(to_host(b, target.values[0].view()) == std::vector<T>(6, T(9)));
  CHECK(load_checkpoint(b, path, target.parameters()).at("config") == "{}");
  CHECK(to_host(b, target.values[0].view()) == std::vector<T>(6, T(2)));
}

// Not run by default: writes checkpoints and their expected contents for tests/data/check_safetensors.py
// into the directory named by RLHF_PYTHON_FIXTURE_DIR.
TEST_CASE("checkpoint: write the fixture for the Python check", "[.][python_fixture]") {
  const char* dir_env = std::getenv("RLHF_PYTHON_FIXTURE_DIR");
  REQUIRE(dir_env != nullptr);
  const fs::path dir(dir_env);
  fs::create_directories(dir);
  const rlhf::reference_backend b;

  const auto expect_entry = [](const char* dtype, std::vector<std::size_t> shape, json_value values) {
    json_value e = json_value::object();
    e.set("dtype", dtype);
    json_value s = json_value::array();
    for (auto d : shape) s.push_back(d);
    e.set("shape", s);
    e.set("values", std::move(values));
    return e;
  };
  const auto write_expected = [](const fs::path& p, const std::map<std::string, std::string>& meta, json_value tensors) {
    json_value root = json_value::object();
    json_value m = json_value::object();
    for (const auto& [k, v] : meta) m.set(k, v);
    root.set("metadata", m);
    root.set("tensors", std::move(tensors));
    std::ofstream(p) << serialize_json(root, 1) << "\n";
  };
  const auto save_model = [&](auto tag, const std::string& stem, std::uint64_t salt) {
    using T = decltype(tag);
    tiny_model<rlhf::reference_backend, T> m(b, llama_like_specs<rlhf::reference_backend, T>(), T(0));
    fill_random(b, m, salt);
    auto extra = to_backend(b, std::vector<T>{T(0.1), T(-1e-20), T(1e20), T(-0.0)}, 2, 2);
    const std::map<std::string, std::string> meta = {{"config", R"({"dim": 4, "vocab_size": 7})"}, {"format", "pt"}};
    save_checkpoint(b, dir / (stem + ".safetensors"), m.parameters(), {{"optimizer.m", extra.view()}}, meta);
    json_value tensors = json_value::object();
    for (const auto& p : m.parameters()) {
      json_value values = json_value::array();
      for (T x : to_host(b, p.value)) values.push_back(static_cast<double>(x));
      tensors.set(p.name, expect_entry(std::is_same_v<T, float> ? "F32" : "F64", {p.value.rows, p.value.cols}, values));
    }
    json_value ev = json_value::array();
    for (T x : to_host(b, extra.view())) ev.push_back(static_cast<double>(x));
    tensors.set("optimizer.m", expect_entry(std::is_same_v<T, float> ? "F32" : "F64", {2, 2}, ev));
    write_expected(dir / (stem + ".expected.json"), meta, tensors);
  };
  save_model(float{}, "checkpoint_f32", 1);
  save_model(double{}, "checkpoint_f64", 2);

  // Integer dtypes, a scalar and an empty tensor, written directly.
  const std::vector<std::int32_t> ids = {1, -2, 2147483647};
  const std::vector<std::uint8_t> mask = {1, 0, 1};
  const std::vector<std::int64_t> step = {9007199254740993LL};
  const std::vector<float> none;
  write_safetensors(dir / "mixed.safetensors",
                    {make_tensor_ref<std::int32_t>("ids", ids, {1, 3}), make_tensor_ref<std::uint8_t>("mask", mask, {3}),
                     make_tensor_ref<std::int64_t>("step", step, {}), make_tensor_ref<float>("empty", none, {0, 2})});
  json_value tensors = json_value::object();
  tensors.set("ids", expect_entry("I32", {1, 3}, json_value::array().push_back(1).push_back(-2).push_back(2147483647)));
  tensors.set("mask", expect_entry("U8", {3}, json_value::array().push_back(1).push_back(0).push_back(1)));
  tensors.set("step", expect_entry("I64", {}, json_value::array().push_back(step[0])));
  tensors.set("empty", expect_entry("F32", {0, 2}, json_value::array()));
  write_expected(dir / "mixed.expected.json", {}, tensors);
}
