// GoogleTest main for dume's tests: MPI is initialized once (a singleton world of one rank
// unless launched by mpirun), since the merge code calls MPI.
#include <gtest/gtest.h>

#include "comm.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const dume::MpiSession mpi(&argc, &argv);
  return RUN_ALL_TESTS();
}
