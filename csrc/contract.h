// Generated from gmm_triton/contract.py by `make contract`.
// Do not edit: tests/test_contract.py fails when this file and contract.py disagree.
#pragma once
#include <cstdint>

namespace gmm {

enum Pred : int { kPredEpsilon = 0, kPredSample = 1, kPredVPrediction = 2, kPredFlow = 3 };
enum Var : int { kVarNone = 0, kVarDiag = 1, kVarVub = 2, kVarExact = 3 };
enum Noise : int { kNoiseNone = 0, kNoisePhilox = 1, kNoiseTensor = 2 };

constexpr int kStreamNoise = 0;
constexpr int kStreamChoice = 1;
constexpr int kStreamTable = 2;
constexpr int kStreamLatent = 3;
constexpr int kNCols = 8;
constexpr int kColAlpha = 0;
constexpr int kColS = 1;
constexpr int kColAlphaPrev = 2;
constexpr int kColSPrev2 = 3;
constexpr int kColVar = 4;
constexpr int kColFinal = 5;
constexpr int kColStep = 6;
constexpr int kCldCols = 24;
constexpr int kCldPsi = 0;
constexpr int kCldEps = 4;
constexpr int kCldChol = 16;
constexpr int kBlurPlanes = 5;
constexpr int kMaxPermutedRank = 3;

}  // namespace gmm
