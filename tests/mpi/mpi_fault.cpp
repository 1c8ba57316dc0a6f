// Run under MPI with 2 ranks: rank 1 fails (a bad demonstration) in the middle of an SFT step while rank 0
// goes on into the step's collectives. The job must end on every rank with the error named (ctest checks
// the message and a timeout guards against a hang), never wait forever.
#include <span>
#include <vector>

#include "models/model_test_support.hpp"
#include "rlhf/backends/reference.hpp"
#include "rlhf/dist/mpi.hpp"
#include "rlhf/optim/adamw.hpp"
#include "rlhf/train/sft_trainer.hpp"

int main(int argc, char** argv) {
  using namespace rlhf;
  return mpi_main(argc, argv, [](const mpi_communicator& comm) {
    const reference_backend b;
    llama_model<reference_backend, double> policy(b, test::tiny_llama_config(false));
    policy.init_random(b, 1, 0.1);
    adamw<reference_backend, double> opt;
    sft_trainer trainer(policy, opt, sft_options{}, comm);
    std::vector<prompt_response> batch{{{1, 2}, {3, 4}}};
    trainer.step(b, batch);  // one good step on every rank
    if (comm.rank() == 1) batch[0].prompt.clear();  // rank 1's next row is invalid: its step throws
    trainer.step(b, batch);
    return 0;  // not reached on any rank: rank 1 throws, and its abort ends rank 0 waiting in a collective
  });
}
