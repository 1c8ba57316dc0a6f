// Story continuations from the pretrained stories260K model (the starting policy of the InstructGPT demo):
// loads the llama2.c checkpoint and tokenizer, encodes a prompt, samples with the KV cache, decodes.
//
//   generate [--data DIR] [--prompt TEXT] [--tokens N] [--temperature T] [--top-p P] [--samples K] [--seed S]
#include <cstdio>
#include <cstring>
#include <string>

#include "rlhf/rlhf.hpp"

#ifndef RLHF_EXAMPLE_DATA_DIR
#define RLHF_EXAMPLE_DATA_DIR "examples/data"
#endif

int main(int argc, char** argv) {
  std::string data = RLHF_EXAMPLE_DATA_DIR, prompt = "One day, Tom saw a";
  std::size_t tokens = 60, samples = 3;
  rlhf::sampling_options sampling = rlhf::sampling_options::llama2c();  // temperature 1, top-p 0.9
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--data") data = value;
    else if (flag == "--prompt") prompt = value;
    else if (flag == "--tokens") tokens = std::stoul(value);
    else if (flag == "--temperature") sampling.temperature = std::stod(value);
    else if (flag == "--top-p") sampling.top_p = std::stod(value);
    else if (flag == "--samples") samples = std::stoul(value);
    else if (flag == "--seed") sampling.seed = std::stoull(value);
    else {
      std::fprintf(stderr, "unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  try {
    const rlhf::eigen_backend b;
    auto model = rlhf::load_llama2c(b, data + "/stories260K.bin");  // generate() reuses its scratch buffers
    const auto tok = rlhf::tokenizer::load(data + "/tok512.bin");
    const auto ids = tok.encode(prompt, /*bos=*/true);
    std::printf("stories260K (%zu parameters), prompt \"%s\" (%zu tokens), temperature %.2f, top-p %.2f\n\n",
                model.config().parameter_count(), prompt.c_str(), ids.size(), sampling.temperature, sampling.top_p);
    for (std::size_t s = 0; s < samples; ++s) {
      sampling.seed += s;
      const auto out = model.generate(b, ids, tokens, sampling);
      std::printf("[%zu] %s\n\n", s + 1, tok.decode(out).c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
